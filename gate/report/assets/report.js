"use strict";
// The review controls: the A/B divider and blink of each pair, the filters. Plain script, no library.
(function () {
  var pairs = Array.prototype.slice.call(document.querySelectorAll("section.pair"));
  var text = document.getElementById("path-filter");
  var shown = document.getElementById("shown");

  function filter() {
    var kind = document.querySelector("input[name=show]:checked").value;
    var needle = text.value.trim().toLowerCase();
    var count = 0;
    pairs.forEach(function (pair) {
      var visible = (kind === "all" || pair.hasAttribute("data-" + kind)) &&
        (!needle || pair.getAttribute("data-path").indexOf(needle) !== -1);
      pair.hidden = !visible;
      count += visible ? 1 : 0;
    });
    shown.textContent = count + " of " + pairs.length + " shown";
  }

  function changed(event) {
    var target = event.target;
    if (target.matches(".ab input[type=range]")) {
      target.closest(".ab").style.setProperty("--split", target.value + "%");
    } else if (target === text || target.name === "show") {
      filter();
    }
  }

  document.addEventListener("input", changed);
  document.addEventListener("change", changed);
  document.addEventListener("click", function (event) {
    var viewer = event.target.closest(".viewer");
    if (viewer) {
      var box = viewer.getBoundingClientRect();
      var split = viewer.parentNode.querySelector("input[type=range]").value / 100;
      var side = event.clientX - box.left < split * box.width ? "ref" : "cand";
      if (viewer.dataset[side]) window.location.href = viewer.dataset[side];
      return;
    }
    var button = event.target.closest("button.blink");
    if (!button) return;
    var on = button.getAttribute("aria-pressed") !== "true";
    button.setAttribute("aria-pressed", String(on));
    button.closest(".ab").classList.toggle("blinking", on);
  });
})();
