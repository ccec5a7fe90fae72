// A checkout page instrumented with the OpenTelemetry web SDK. It reads from its own URL:
// ?collector=<OTLP/HTTP base URL>&token=<bearer token>&dist=<build ID>
import { SimpleSpanProcessor, WebTracerProvider } from "@opentelemetry/sdk-trace-web";
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-http";
import { resourceFromAttributes } from "@opentelemetry/resources";

const params = new URLSearchParams(location.search);
const exporter = new OTLPTraceExporter({
  url: params.get("collector") + "/v1/traces",
  headers: { Authorization: "Bearer " + params.get("token") },
});
const provider = new WebTracerProvider({
  resource: resourceFromAttributes({
    "service.name": "shop-web",
    "service.version": "1.4.2",
    "sentry.dist": params.get("dist"),
    "user_agent.original": navigator.userAgent,
  }),
  spanProcessors: [new SimpleSpanProcessor(exporter)],
});
provider.register();
const tracer = provider.getTracer("checkout-page");

function applyCoupon(code) {
  if (code.length < 8) {
    throw new TypeError("coupon code too short: " + code); // the line the test resolves to
  }
  return code;
}

async function main() {
  const span = tracer.startSpan("checkout click", { attributes: { "url.full": location.href } });
  try {
    applyCoupon("ABC");
  } catch (err) {
    span.recordException(err);
    span.setStatus({ code: 2, message: String(err) });
  }
  span.end();
  await provider.forceFlush();
  document.getElementById("status").textContent = "flushed";
}
main().catch((err) => {
  document.getElementById("status").textContent = "failed: " + err;
});
