// Mnemo's only script: small conveniences on pages that work without it.
"use strict";

document.addEventListener("DOMContentLoaded", function () {
  var log = document.getElementById("log");
  if (log && log.lastElementChild) {
    log.lastElementChild.scrollIntoView({ block: "end" });
  }

  var composer = document.getElementById("composer");
  var box = document.getElementById("message");
  var status = document.getElementById("status");
  if (composer && box) {
    box.focus();
    // Enter sends, Shift+Enter is a new line (the hint under the box says so).
    box.addEventListener("keydown", function (event) {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        if (box.value.trim()) {
          composer.requestSubmit();
        }
      }
    });
    composer.addEventListener("submit", function () {
      var button = composer.querySelector("button[type=submit]");
      if (button) {
        button.disabled = true;
      }
      if (status) {
        status.textContent = "Mnemo is thinking…";
      }
    });
  }

  // "Forget selected" asks once before deleting.
  var forget = document.getElementById("forget-form");
  if (forget) {
    forget.addEventListener("submit", function (event) {
      var picked = forget.querySelectorAll("input[name=id]:checked").length;
      if (picked && !window.confirm("Forget " + picked + " item" + (picked === 1 ? "" : "s") + "? This cannot be undone.")) {
        event.preventDefault();
      }
    });
  }
});
