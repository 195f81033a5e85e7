"""`lab dashboard`: a live web page of one lab, with controls for a demo.

Built on Starlette, served by uvicorn. Why these and not aiohttp: the page needs three small
things (a few JSON routes, one server-sent-event stream, static files), and Starlette gives
exactly those with no framework around them, while its `TestClient` lets every security rule
(Host check, token, 400 on bad input) be tested in-process without a socket or a Docker engine.
uvicorn serves a socket we bound ourselves, so "port taken" is reported before anything starts.
Both are actively maintained and small (pure Python with h11, no compiled extras needed).
Server-sent events rather than a websocket: the page only listens; its actions are ordinary
POSTs, which carry the token and get an ordinary status code back.

Modules: `security` (pure rules: which Host, which token), `actions` (validate and run a
control, with the same library functions as the CLI), `app` (the Starlette app: the only
starlette user), `server` (binding and uvicorn: the only uvicorn user).
"""
