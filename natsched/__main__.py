from natsched.cli.app import main

main()
