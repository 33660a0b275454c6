"""The Flink job's entry point: runs in the Flink venv, never in the app's interpreter.

    <flink venv>/bin/python pipeline/flink/job.py <settings.json>

Reads ``sql/job.sql``, fills its ``${name}`` placeholders from the settings (written by
:mod:`pipeline.flink.launcher`), runs the three INSERTs as one statement set on a local Flink
mini-cluster, writes ``{"job_id", "rest_port", "pid"}`` to the settings' ``state_file`` and
waits: a bounded run ends when the sources reach their end offsets, a streaming run when the
launcher cancels it. Imports only the standard library and pyflink.
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

SQL_FILE = Path(__file__).resolve().parent / "sql" / "job.sql"


def render_sql(settings: dict) -> list[str]:
    """The job's statements with the placeholders filled (split on lines holding only ';')."""
    settings = {**settings, "lateness": day_to_second(settings["lateness_s"])}

    def fill(match: re.Match) -> str:
        value = settings[match.group(1)]  # a KeyError names the missing setting
        return str(value)

    text = re.sub(r"\$\{([a-z_]+)\}", fill, SQL_FILE.read_text(encoding="utf-8"))
    statements, current = [], []
    for line in text.splitlines():
        if line.strip() == ";":
            statements.append("\n".join(current))
            current = []
        else:
            current.append(line)
    statements.append("\n".join(current))
    return [s for s in statements if _code(s)]


def day_to_second(seconds: int) -> str:
    """A DAY TO SECOND interval literal's text ('0 01:00:00' for 3600)."""
    days, rest = divmod(int(seconds), 86_400)
    return f"{days} {rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"


def _code(statement: str) -> str:
    return "\n".join(l for l in statement.splitlines() if not l.strip().startswith("--")).strip()


def flink_config(settings: dict) -> dict[str, str]:
    conf = {
        "parallelism.default": "1",
        "rest.address": "127.0.0.1",
        "rest.bind-address": "127.0.0.1",
        "rest.port": str(settings["rest_port"]),
        "pipeline.name": settings.get("job_name", "kappalab-flink"),
        # Sources with no new record for this long stop holding the watermark back (the news
        # topic can be quiet for minutes).
        "table.exec.source.idle-timeout": "30 s",
        "taskmanager.memory.process.size": "1024m",
        "jobmanager.memory.process.size": "768m",
    }
    if settings.get("checkpoint_dir"):
        conf.update({
            "execution.checkpointing.interval": f"{settings.get('checkpoint_every_s', 10)} s",
            "execution.checkpointing.dir": Path(settings["checkpoint_dir"]).as_uri(),
            "execution.checkpointing.externalized-checkpoint-retention":
                "RETAIN_ON_CANCELLATION",
            "execution.checkpointing.num-retained": "2",
        })
    if settings.get("restore_from"):
        conf["execution.state-recovery.path"] = Path(settings["restore_from"]).as_uri()
    return conf


def main(path: str) -> int:
    settings = json.loads(Path(path).read_text(encoding="utf-8"))
    from pyflink.common import Configuration
    from pyflink.table import EnvironmentSettings, TableEnvironment

    conf = Configuration()
    for key, value in flink_config(settings).items():
        conf.set_string(key, value)
    env = TableEnvironment.create(
        EnvironmentSettings.new_instance().in_streaming_mode().with_configuration(conf).build())
    statements = render_sql(settings)
    inserts = [s for s in statements if _code(s).upper().startswith("INSERT")]
    for ddl in statements:
        if ddl not in inserts:
            env.execute_sql(ddl)
    stmt_set = env.create_statement_set()
    for insert in inserts:
        stmt_set.add_insert_sql(insert)
    started = time.time()
    result = stmt_set.execute()
    job_id = str(result.get_job_client().get_job_id())
    state_file = settings.get("state_file")
    if state_file:
        Path(state_file).write_text(json.dumps({
            "job_id": job_id, "rest_port": settings["rest_port"], "pid": os.getpid(),
            "submitted": time.time(), "execute_s": round(time.time() - started, 1),
            "bounded": bool(settings.get("bounded"))}), encoding="utf-8")
    print(f"flink job {job_id} submitted", flush=True)
    result.wait()
    print(f"flink job {job_id} finished after {time.time() - started:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
