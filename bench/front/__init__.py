"""The sections of ``bench_front.py`` (the OPC UA front at city scale, issue 13), one module each,
and the processes they start: our server with a synthetic field (``ours``), the stock asyncua
peer (``asyncua_peer``) and the node-opcua scripts under ``bench/node/`` (``node``)."""
