"""Task records (:class:`~xclass.tasks.base.Task`): one module per task, registered in
:data:`TASKS` on import. Adding a task is one module here (imported below), its configs under
``configs/<task>/`` and its tests; every per-task lookup in the package reads these records."""
from xclass.tasks.base import (TASKS, Col, PairFile, Table, Task, get_task, register_task, tables, task_names,
                               unregister_task)
from xclass.tasks import face, speaker, quic, xmc  # noqa: F401,E402  (registration, in this order)

__all__ = ["TASKS", "Col", "PairFile", "Table", "Task", "get_task", "register_task", "tables", "task_names",
           "unregister_task"]
