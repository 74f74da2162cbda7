# Varnish for e2e/bench/gateway.sh: rendered with @B1@, @B2@ (lib.sh
# render). /static/ is cached as the backend's Cache-Control says (the
# built-in rules take the TTL from max-age); everything else is passed.
vcl 4.1;

import directors;

probe healthz {
	.url = "/healthz";
	.interval = 2s;
	.timeout = 1s;
	.window = 3;
	.threshold = 2;
	.initial = 2;
}

backend b1 { .host = "127.0.0.1"; .port = "@B1@"; .probe = healthz; }
backend b2 { .host = "127.0.0.1"; .port = "@B2@"; .probe = healthz; }

sub vcl_init {
	new app = directors.round_robin();
	app.add_backend(b1);
	app.add_backend(b2);
}

sub vcl_recv {
	set req.backend_hint = app.backend();
	if (req.url ~ "^/static/") {
		unset req.http.Cookie;
		return (hash);
	}
	return (pass);
}

sub vcl_backend_response {
	if (bereq.url ~ "^/static/") {
		unset beresp.http.Set-Cookie;
	}
}
