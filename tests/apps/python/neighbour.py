"""A module beside wsgi_app.py: the app's directory is on sys.path."""


def greeting():
    return "hello from the neighbour module"
