"""Sphinx hook for the API reference: Keras classes show their ``__init__`` signature.

Keras' ``Layer`` defines ``__new__(cls, *args, **kwargs)``, which autodoc would
show as the signature of every layer and model of the library.
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


def setup(app):
    app.connect("autodoc-process-signature", _init_signature)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
