"""The dataset: its schema and assembly (`schema`), one class per file format (`formats`), save and open (`files`),
safe paths on disk (`storage`) and the output policy of every writer (`outputs`)."""
