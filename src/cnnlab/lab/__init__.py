"""``cnnlab lab``: a local web app over cnnlab's views of CNNs and runs (Gradio, the optional ``lab`` extra).

Each page is a set of plain functions that return data and figures (`budget_page`, `classify`, `runs`,
`scan_page`), tested without a browser; `app` only wires them to Gradio components. Nothing here is imported by
``import cnnlab`` or ``cnnlab --help``.
"""
