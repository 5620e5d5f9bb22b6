"""gunicorn settings for `make superset` (the command line in apparel/superset_setup.py sets the rest).

Superset is imported once in the master (`preload_app`) and the workers are forked from it: the
start is one application start instead of one per worker, and the workers share its memory pages.
Connections the master opened must not be shared with the workers (two processes on one socket
corrupt the protocol), so each worker starts with fresh connection pools.
"""

preload_app = True
# Stop promptly on `make superset-stop` (requests here are short dashboard queries).
graceful_timeout = 10
# gunicorn 27's control socket defaults to one path per user ($HOME/.gunicorn/gunicorn.ctl): two
# instances (make superset and the tests) would fight over it. Nothing here uses it.
control_socket_disable = True


def post_fork(server, worker):
    from superset.extensions import db

    app = server.app.wsgi()
    with app.app_context():
        for engine in db.engines.values():
            # close=False: leave the master's connections alone, only forget them in this worker.
            engine.dispose(close=False)
