"""Your function: `handle(request)` is called for every call.

request.method, request.path, request.query (dict), request.headers (dict,
lower-case names), request.body (bytes). Return a body (str, bytes, or a
dict / list sent as JSON) or a tuple (status, headers, body).

Dependencies: list them in requirements.txt and vendor them into vendor/
(builds have no network), see README.md.
"""


def handle(request):
    name = request.query.get("name", "world")
    return f"hello {name} from {{name}} (python)\n"
