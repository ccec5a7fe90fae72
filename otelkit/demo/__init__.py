"""`otelkit demo`: the default collector, a small instrumented shop and traffic that shows every situation otelkit catches."""
