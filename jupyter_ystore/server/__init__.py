"""The Jupyter Server extension: its settings (``app``), the endpoints the JupyterLab
collaboration front end calls (``handlers``, ``timeline``), the y-websocket protocol
(``protocol``), session ids (``sessions``), awareness (``awareness``), rooms (``rooms``) and
the Prometheus metrics (``metrics``)."""
