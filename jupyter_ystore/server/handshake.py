"""Let go of what a websocket's HTTP handshake left behind, once the connection is open.

Tornado keeps, for as long as a websocket stays open, everything its upgrade request made:
the request's headers, arguments and cookies, the response's headers, the HTTP connection
objects (with the headers as read and the finished task that served the request) and the
template namespace. None of it is used again once the connection is open, but it is about 50
objects a connection that the garbage collector tracks; with the task that ran the handshake
(kept alive while tornado's frame loop awaits the connection's end, see
``frames.BufferedFrameReader``) it was half of what a full collection walked at 480
clients, and a full collection holds the event loop for every room. What the handler still
reads (the user, the session id, the remote address for logs) stays.
"""

from __future__ import annotations

from tornado.httputil import HTTPHeaders
from tornado.web import RequestHandler

#: What an open websocket's request and response headers become: one empty instance for
#: every connection (each of its own was four more objects for the collector, per side).
#: Nothing reads or writes them once the connection is open; a test checks it stays empty.
SPENT_HEADERS = HTTPHeaders()


def forget_handshake(handler: RequestHandler) -> None:
    """Drop the upgrade request's leftovers from ``handler`` (call once it is open)."""
    request = handler.request
    request.connection = None  # the HTTP/1 connection: the stream was detached from it
    request.server_connection = None  # and its server side, holding the finished request task
    request.headers = SPENT_HEADERS
    request.arguments = {}
    request.query_arguments = {}
    request.body_arguments = {}
    request.files = {}
    request.__dict__.pop("_cookies", None)  # parsed on the first get_cookie
    handler._headers = SPENT_HEADERS  # the 101 response's, written already
    handler.__dict__.pop("_new_cookie", None)  # cookies set on that response
    handler.ui = None  # template modules (tornado drops them itself only at close)
    # Lists of the HTTP side, three more objects a connection for the collector; tuples are
    # not tracked. Read only while serving the upgrade (the route's arguments, the output
    # transforms, the body written), never once the connection is open.
    handler.path_args = ()
    handler._transforms = ()
    handler._write_buffer = ()
