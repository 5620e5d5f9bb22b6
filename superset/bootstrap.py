"""Prepare Superset's metadata database in one process: migrate, sync roles, create or update the admin.

Runs in `.venv-superset` (`apparel.superset_setup` calls it before starting the web server). It is
the same work as `superset db upgrade`, `superset init` and `superset fab create-admin` /
`reset-password`, but pays Superset's slow application start once instead of three times.

Reads SUPERSET_ADMIN_USER (default admin), SUPERSET_ADMIN_PASSWORD, SUPERSET_ADMIN_EMAIL, and the
settings of superset_config.py. Prints the metadata database's migration revision on the last line.
"""

from __future__ import annotations

import logging
import os
import sys


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    username = os.environ.get("SUPERSET_ADMIN_USER") or "admin"
    password = os.environ.get("SUPERSET_ADMIN_PASSWORD")
    if not password:
        print("SUPERSET_ADMIN_PASSWORD is not set", file=sys.stderr)
        return 2
    email = os.environ.get("SUPERSET_ADMIN_EMAIL") or f"{username}@localhost.localdomain"

    from flask_migrate import upgrade
    from superset.app import create_app

    app = create_app()
    with app.app_context():
        from superset.extensions import appbuilder, db, security_manager

        upgrade()
        appbuilder.add_permissions(update_perms=True)
        security_manager.sync_role_definitions()

        user = security_manager.find_user(username=username)
        if user is None:
            admin_role = security_manager.find_role("Admin")
            created = security_manager.add_user(username, "Superset", "Admin", email, admin_role, password)
            if not created:
                print(f"could not create the admin user {username}", file=sys.stderr)
                return 1
            print(f"created admin user {username}")
        else:
            security_manager.reset_password(user.id, password)
            print(f"admin user {username} exists; password set from the environment")
        revision = db.session.execute(db.text("select version_num from alembic_version")).scalar()
        db.session.commit()
    print(f"revision {revision}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
