"""Where completions come from: the in-process engine, or a served model over the OpenAI API.

Fuzz, report and snapshot code see only the ``Backend`` interface (``base.py``).
"""
