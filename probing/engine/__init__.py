"""The Lightning engine: `ExtractionModule` (forward under hooks), `RunWriterCallback` (stream to storage),
and `DatasetRunner`, the front that wires them with the data module and a `Trainer`."""
