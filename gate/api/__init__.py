"""The HTTP API and the dashboard (`lpips-gate serve`, needs lpips-gate[api]): FastAPI routes that
parse, call a service of gate, and format; Jinja2 pages with a little plain JavaScript."""
