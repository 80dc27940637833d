"use strict";
// No inline script (the Content-Security-Policy forbids it): show the failure note here.
if (new URLSearchParams(location.search).has("failed")) {
  document.getElementById("failed").hidden = false;
}
