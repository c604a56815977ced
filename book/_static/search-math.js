// fomm-lessons: search results quote the pages' text, maths included, as TeX
// source. Typeset it as the pages are; where the quote cuts a formula in two,
// end the quote before it (tests/test_browser.py checks that no TeX is left).
// data-fomm-math on the results says "waiting" while new text waits to be
// typeset and "done" once all of it is, so a test knows when to look.
function fommCutBrokenMath(results) {
  const walker = document.createTreeWalker(results, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    if (node.parentElement.closest("mjx-container")) {
      continue;
    }
    const start = node.textContent.search(/\\[(\[]/);
    if (start >= 0) {
      node.textContent = node.textContent.slice(0, start).trimEnd() + " ...";
    }
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const results = document.getElementById("search-results");
  if (!results || !window.MathJax) {
    return;
  }
  results.classList.add("mathjax_process");
  let later = null;
  const observer = new MutationObserver(() => {
    results.dataset.fommMath = "waiting";
    clearTimeout(later);
    later = setTimeout(async () => {
      await MathJax.startup.promise;
      observer.disconnect();
      await MathJax.typesetPromise([results]);
      fommCutBrokenMath(results);
      results.dataset.fommMath = "done";
      observer.observe(results, {childList: true, subtree: true});
    }, 100);
  });
  observer.observe(results, {childList: true, subtree: true});
});
