"""Adds a greeting header to each request, and says on each response that Python
served it. Config: {greeting: TEXT} (default "hello")."""

import sluice_filter as sf


class Hello(sf.Filter):
    def __init__(self, config):
        self.greeting = (config or {}).get("greeting", "hello")
        if not isinstance(self.greeting, str) or not self.greeting:
            raise sf.ConfigError(".greeting", "must not be empty")

    def on_request(self, request):
        if request.path() == "/hello":
            return sf.Respond(200, [("content-type", "text/plain")], f"{self.greeting}\n")
        request.set_header("x-hello", self.greeting)

    def on_response(self, response):
        response.set_header("x-served-by", "python")


WitWorld = sf.export(Hello)
