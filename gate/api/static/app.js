// The A/B slider: the range's value is how much of the frame (from the left) shows the candidate,
// clipped over the reference. Plain JavaScript, no build step.
"use strict";
document.querySelectorAll("figure").forEach((figure) => {
  const range = figure.querySelector("input.ab-range");
  const cand = figure.querySelector("img.ab-cand");
  const divider = figure.querySelector(".ab-divider");
  if (!range || !cand) return;
  const show = () => {
    const value = Number(range.value);
    cand.style.clipPath = `inset(0 ${100 - value}% 0 0)`;
    if (divider) divider.style.left = `${value}%`;
  };
  range.addEventListener("input", show);
  show();
});
