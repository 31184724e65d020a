// Adds a greeting header to each request, and says on each response that JavaScript
// served it. Config: {greeting: TEXT} (default "hello").
import { ConfigError, Filter, Respond, exportFilter } from "./sluice-filter.js";

class Hello extends Filter {
  constructor(config) {
    super(config);
    this.greeting = config?.greeting ?? "hello";
    if (typeof this.greeting !== "string" || !this.greeting) {
      throw new ConfigError(".greeting", "must not be empty");
    }
  }

  onRequest(request) {
    if (request.path() === "/hello") {
      return new Respond(200, [["content-type", "text/plain"]], `${this.greeting}\n`);
    }
    request.setHeader("x-hello", this.greeting);
  }

  onResponse(response) {
    response.setHeader("x-served-by", "javascript");
  }
}

export const {
  configure,
  onRequest,
  onRequestBody,
  onResponse,
  onResponseBody,
  onRequestStreamStart,
  onRequestChunk,
  onRequestStreamEnd,
  onResponseStreamStart,
  onResponseChunk,
  onResponseStreamEnd,
} = exportFilter(Hello);
