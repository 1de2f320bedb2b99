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

  // Live parts (the status, the operations page): re-fetch the server-rendered section
  // every data-every milliseconds (1000 by default) until it is final.
  var live = document.getElementById("live-status");
  if (live && live.getAttribute("data-final") !== "true") {
    var url = live.getAttribute("data-fragment");
    var every = parseInt(live.getAttribute("data-every") || "1000", 10);
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
    }, every);
  }

  // Browser-side checks on the application form, before a round trip. The server
  // checks everything again. Each field has one message slot: while it shows a
  // message, the field's hint is hidden and the field is described by the message alone.
  var form = document.getElementById("application-form");
  if (form) {
    form.setAttribute("novalidate", "");
    form.addEventListener("submit", function (event) {
      var first = null;
      form.querySelectorAll("input, select").forEach(function (input) {
        var slot = document.getElementById(input.id + "-error");
        if (!slot) { return; }
        var hint = document.getElementById(input.id + "-hint");
        var v = input.validity;
        var message = "";
        if (v.valueMissing) { message = input.getAttribute("data-missing"); }
        else if (v.patternMismatch || v.typeMismatch || v.badInput || v.rangeUnderflow || v.rangeOverflow || v.stepMismatch) {
          message = input.getAttribute("data-malformed");
        }
        slot.textContent = message || "";
        if (hint) { hint.hidden = !!message; }
        input.setAttribute("aria-describedby", message || !hint ? slot.id : hint.id + " " + slot.id);
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
