// MathJax configuration for pymdownx.arithmatex (generic mode), after the
// mkdocs-material documentation. MathJax itself is served with the site
// (docs/vendor/mathjax/), loaded right after this file (mkdocs.yml).
window.MathJax = {
  // The theme's `document$` below typesets every page it shows, the first
  // one included. MathJax typesetting the page on its own as well could come
  // first, and the `clearCache()` below would then drop the styles of the
  // characters already typeset: the math would show nothing.
  startup: { typeset: false },
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex",
  },
};

document$.subscribe(() => {
  // Until MathJax has loaded, `window.MathJax` is the configuration above:
  // when its script is missing or blocked, the TeX stays as it is and
  // nothing throws.
  if (typeof MathJax.typesetPromise !== "function") {
    return;
  }
  MathJax.startup.promise.then(() => {
    MathJax.startup.output.clearCache();
    MathJax.typesetClear();
    MathJax.texReset();
    return MathJax.typesetPromise();
  });
});
