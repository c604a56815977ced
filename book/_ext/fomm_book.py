"""Two Sphinx hooks for the book.

* The API reference shows Keras classes with their ``__init__`` signature:
  Keras' ``Layer`` defines ``__new__(cls, *args, **kwargs)``, which autodoc
  would show as the signature of every layer and model of the library.
* A page loads each script once: sphinx-thebe adds its inline configuration
  (``const THEBE_JS_URL = ...``) twice under Jupyter Book 1.x, and the second
  copy is a JavaScript error on every page (tests/test_browser.py).
* The search page loads MathJax, so that ``_static/search-math.js`` can typeset
  the maths that the results quote.
"""

import inspect


def _init_signature(app, what, name, obj, options, signature, return_annotation):
    if what != "class" or signature != "(*args, **kwargs)":
        return None
    try:
        parameters = list(inspect.signature(obj.__init__).parameters.values())[1:]  # without self
    except (TypeError, ValueError):
        return None
    return str(inspect.Signature(parameters)), return_annotation


def _script_key(script):
    """What a script tag says: its file (None and "" alike: both mean an inline body) and attributes."""
    attributes = getattr(script, "attributes", {})
    filename = getattr(script, "filename", script) or ""
    return str(filename), tuple(sorted((key, str(value)) for key, value in attributes.items()))


def _scripts_once(app, pagename, templatename, context, doctree):
    if "script_files" not in context:
        return
    scripts, seen = [], set()
    for script in context["script_files"]:
        key = _script_key(script)
        if key not in seen:
            seen.add(key)
            scripts.append(script)
    context["script_files"][:] = scripts  # in place: the builder shares this list


def _math_on_search_page(app, pagename, templatename, context, doctree):
    if pagename == "search":
        app.env.get_domain("math").data["has_equations"][pagename] = True


def setup(app):
    app.connect("html-page-context", _math_on_search_page, priority=400)  # before MathJax's hook
    app.connect("autodoc-process-signature", _init_signature)
    app.connect("html-page-context", _scripts_once, priority=900)  # after the themes' own hooks
    return {"parallel_read_safe": True, "parallel_write_safe": True}
