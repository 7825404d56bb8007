"""Data: Parquet task schemas, validation, the sharded streaming reader and synthetic generators."""
from xclass.data.schema import DataError, TASKS, TASK_COLUMNS, INPUT_GROUPS, SCHEMA_VERSION
from xclass.data.validate import validate_file
from xclass.data.arrow import table_to_numpy
from xclass.data.reader import ParquetReader
from xclass.data.generate import GENERATORS, make_data

__all__ = ["DataError", "TASKS", "TASK_COLUMNS", "INPUT_GROUPS", "SCHEMA_VERSION", "validate_file",
           "ParquetReader", "table_to_numpy", "GENERATORS", "make_data"]
