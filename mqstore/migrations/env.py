"""Alembic environment for mqstore's own tables, shipped inside the package.

Online mode only. The caller (``mqstore.migrate.migrate``) opens the SQLAlchemy
connection, takes SQLite's write lock with ``BEGIN IMMEDIATE`` and passes the connection in
``config.attributes["connection"]``. When that connection is already inside a transaction,
alembic runs every migration inside it and leaves the commit to the caller, so the check of
the current revision and the upgrade happen under one lock.

mqstore records its revision in ``mq_schema_version``, not ``alembic_version``, so an
application that keeps its own alembic history in the same file is never touched.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from mqstore.schema import metadata

VERSION_TABLE = "mq_schema_version"

config = context.config
target_metadata = metadata


def include_name(name: str | None, type_: str, parent_names: object) -> bool:
    """Let autogenerate see only mqstore's tables, never an application's own."""
    if type_ == "table":
        return name is not None and name.startswith("mq_")
    return True


def _configure_and_run(connection: object) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        version_table=VERSION_TABLE,
        render_as_batch=True,
        include_name=include_name,
    )
    # SQLite's alembic impl is not "transactional DDL": with a connection that is not yet in
    # a transaction, alembic begins and commits one per migration. With a connection that is
    # already in one (the normal path, see migrate.py), this block is a no-op and the caller
    # commits.
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure_and_run(connection)
        return
    # Developer use only (e.g. ``alembic revision --autogenerate`` against a scratch file):
    # fall back to sqlalchemy.url.
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError(
            "mqstore migrations need a connection in config.attributes['connection'] "
            "(or sqlalchemy.url); use mqstore.migrate.migrate(path)"
        )
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            _configure_and_run(conn)
            conn.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise RuntimeError("mqstore migrations run online only")
run_migrations_online()
