"""The historian: what the server keeps of every tag's past.

- :mod:`scada.historian.compress`: per-tag deadband and swinging-door compression,
  vectorised over the TagDB's change batches; its output is a :class:`StoredBatch`.
- :mod:`scada.historian.store`: the embedded store (SQLite in WAL mode): raw values,
  per-minute and per-hour rollups, retention per tag class, raw and processed reads;
  :class:`HistoryStore` composes :mod:`~scada.historian.schema` (tables, opening, tag ids),
  :mod:`~scada.historian.writer` (staging, merges, retention) and
  :mod:`~scada.historian.reader` (reads), with the aggregates as pure functions in
  :mod:`~scada.historian.aggregates` and one merge of time-ordered parts in
  :mod:`~scada.historian.merge`.
- :mod:`scada.historian.spool` and :mod:`scada.historian.influx`: the durable spool and the
  InfluxDB v2 sink for an external time-series database.
"""
