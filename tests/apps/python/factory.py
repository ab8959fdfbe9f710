"""Apps named by a callable: `factory.py:make_app()` (a factory), `factory.py:other`."""


def make_app():
    def made(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"made by make_app()"]

    return made


def other(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"the callable named other"]


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"application, since there is no app"]
