// Progressive enhancement only: every page works without this file.
(function () {
  "use strict";

  // Copy the reference to the clipboard.
  document.querySelectorAll("[data-copy]").forEach(function (button) {
    button.hidden = false;
    button.addEventListener("click", function () {
      var text = button.getAttribute("data-copy");
      navigator.clipboard.writeText(text).then(function () {
        button.textContent = "Copied";
        setTimeout(function () { button.textContent = "Copy reference"; }, 2000);
      });
    });
  });

  // Live status: re-fetch the server-rendered status section until it is final.
  var live = document.getElementById("live-status");
  if (live && live.getAttribute("data-final") !== "true") {
    var url = live.getAttribute("data-fragment");
    var timer = setInterval(function () {
      fetch(url, { headers: { "Accept": "text/html" } })
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) {
          if (html === null) { return; }
          var holder = document.createElement("div");
          holder.innerHTML = html; // server-rendered and escaped
          var next = holder.firstElementChild;
          if (!next) { return; }
          if (next.innerHTML !== live.innerHTML) { live.innerHTML = next.innerHTML; }
          if (next.getAttribute("data-final") === "true") {
            live.setAttribute("data-final", "true");
            clearInterval(timer);
          }
        })
        .catch(function () { /* try again on the next tick */ });
    }, 1000);
  }

  // Browser-side checks on the application form, before a round trip. The server
  // checks everything again.
  var form = document.getElementById("application-form");
  if (form) {
    form.setAttribute("novalidate", "");
    form.addEventListener("submit", function (event) {
      var first = null;
      form.querySelectorAll("input, select").forEach(function (input) {
        var slot = document.getElementById(input.id + "-error");
        if (!slot) { return; }
        var message = "";
        if (input.validity.valueMissing) { message = "This field is required."; }
        else if (input.validity.patternMismatch || input.validity.typeMismatch) { message = input.getAttribute("data-format") || "Please check the format."; }
        else if (input.validity.rangeUnderflow || input.validity.rangeOverflow) { message = input.getAttribute("data-format") || "Out of range."; }
        slot.textContent = message;
        input.setAttribute("aria-invalid", message ? "true" : "false");
        if (message && !first) { first = input; }
      });
      if (first) {
        event.preventDefault();
        var summary = document.getElementById("form-errors");
        if (summary) { summary.textContent = "Please correct the highlighted fields."; }
        first.focus();
      }
    });
  }
})();
