"""What a document is, apart from where it is stored or served: lib0 framing (``codec``),
pycrdt and y_py told apart (``ydoc``), Yjs updates read strictly (``yupdate``) and checked
against a document (``item_index``, ``update_guard``), document content (``content``),
history (``history``) and the three-way merge of a file into a document (``merge``)."""
