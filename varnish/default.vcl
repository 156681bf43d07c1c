#
# ssedge edge: balance relay nodes, pass event streams through unbuffered, and cache the
# handshake, stream metadata, CORS preflights and replay ranges. Nothing that carries a token,
# and nothing the relays mark private, is ever cached.
#
# Read like Varnish's builtin.vcl: each state subroutine calls small subroutines named for
# their intent; every decision has its comment. Varnish 7.1, VCL 4.1.
#
vcl 4.1;

import directors;
import std;

include "probes.vcl";
include "backends.vcl";

#######################################################################
# Client side

sub vcl_recv {
    call ssedge_internal_only;
    call ssedge_normalize;
    if (req.method == "OPTIONS") {
        call ssedge_preflight;
    }
    if (req.url ~ "^/v1/streams/[^/]+/events") {
        if (req.method == "POST") {
            call ssedge_publish;
        }
        call ssedge_stream;
    }
    if (req.url ~ "^/v1/streams/events\?(.*&)?topic=") {
        # one stream on several topics: a stream like any other (not the metadata of a
        # topic named "events", which has no topic= in its query)
        call ssedge_stream;
    }
    if (req.url ~ "^/v1/replay/") {
        call ssedge_replay;
    }
    if (req.url ~ "^/v1/auth/") {
        call ssedge_token_cookie;
    }
    if (req.url ~ "^/v1/(handshake|streams/[^/]+)(\?|$)") {
        call ssedge_cached_json;
    }
    if (req.url ~ "^/(dashboard|static/[^/?]+)?(\?|$)") {
        call ssedge_page;
    }
    # a relay's liveness (/healthz) and anything else: never cached
    set req.backend_hint = relays.backend();
    return (pass);
}

sub ssedge_internal_only {
    # a node's /metrics and /readyz are for Prometheus and the balancers, which reach the
    # nodes directly: through the edge they would tell anyone the load, the workers and
    # whether Redis is reachable. Not found here (the edge's probes go to the backends
    # directly, not through vcl_recv). Matched as the relays read a path: extra slashes and
    # percent-encoded letters name the same resource there.
    if (req.url ~ "(?i)^/+((m|%6d)(e|%65)(t|%74)(r|%72)(i|%69)(c|%63)(s|%73)|(r|%72)(e|%65)(a|%61)(d|%64)(y|%79)(z|%7a))/*(\?|$)") {
        return (synth(404, "Not Found"));
    }
}

sub ssedge_normalize {
    # the cache key is exactly what makes the answer differ: the path and the sorted query;
    # the Host header makes no difference to any ssedge answer
    set req.url = std.querysort(req.url);
    call ssedge_keep_token_cookie;
    set req.http.X-Forwarded-Proto = "http";
}

sub ssedge_keep_token_cookie {
    # cookies make no difference to an ssedge answer, except a reader's token cookie
    # (ssedge_auth): a request that carries it keeps its Cookie header for the relay and is
    # passed (ssedge_pass_tokens); any other Cookie is dropped
    if (req.http.Cookie !~ "(^|;)\s*ssedge_auth=") {
        unset req.http.Cookie;
    }
}

sub ssedge_pass_tokens {
    # an answer to a request that carries a token (Authorization, the token cookie or the
    # access_token query parameter) may be for that token alone: the request is passed,
    # never looked up nor stored, and the token reaches the backend untouched. A spelling
    # this misses is still never stored: the relay marks such answers private (see
    # ssedge_never_store).
    if (req.http.Authorization || req.http.Cookie ||
        req.url ~ "(?i)[?&]access(_|%5f)token=") {
        return (pass);
    }
}

sub ssedge_preflight {
    # CORS preflights are answered by the relays and cached per origin and requested
    # method/headers (they are part of the hash); the method is restored for the fetch
    set req.http.X-Ssedge-Method = "OPTIONS";
    set req.backend_hint = relays.backend();
    return (hash);
}

sub ssedge_publish {
    # passed, never cached. Only a publish carrying an Idempotency-Key keeps its body, so that
    # it can be retried on another relay (ssedge_publish_failed); more than 1 MiB is the
    # relay's 413 anyway. Without a kept body Varnish cannot resend a publish at all, not
    # even by its own one-shot retry on a reused backend connection that died after the
    # request went out (measured on 7.1: with the body kept, a backend that took the request
    # and closed the connection got it twice).
    if (req.http.Idempotency-Key) {
        std.cache_req_body(1100KB);
    }
    set req.backend_hint = relays.backend();
    return (pass);
}

sub ssedge_stream {
    # an event stream is passed: each client has its own stream, Last-Event-ID and query go
    # to the relay untouched
    set req.backend_hint = relays.backend();
    # send_timeout is a total deadline for a response (600 s by default): it would cut every
    # stream at 10 minutes. A stream lives as long as its client reads it.
    set sess.send_timeout = 365d;
    # a client whose writes block for this long is dropped (it resumes with Last-Event-ID)
    set sess.idle_send_timeout = 120s;
    # no compression: it would buffer events until a block fills
    unset req.http.Accept-Encoding;
    return (pass);
}

sub ssedge_token_cookie {
    # a page renews (POST) or clears (DELETE) its token cookie: the answer's Set-Cookie holds
    # a token, for this browser alone. Passed, never looked up nor stored; repeating it is
    # harmless, so a relay that refuses the connection is retried like any pass.
    set req.backend_hint = relays.backend();
    return (pass);
}

sub ssedge_replay {
    # replay pages go to the replay service and are cached as it says: closed ranges for a
    # year (immutable), pages reaching the stream's head for a second; identical concurrent
    # requests wait for one fetch (the waiting list)
    set req.backend_hint = replay;
    call ssedge_pass_tokens;
    return (hash);
}

sub ssedge_cached_json {
    # handshake and stream metadata: cached for the lifetime the relay gives (about 30 s and
    # 1 s). While the relays are healthy a stale copy is served for at most 10 s while it is
    # refreshed; while none is, the last copy is served for up to an hour (beresp.grace).
    set req.backend_hint = relays.backend();
    call ssedge_pass_tokens;
    if (std.healthy(req.backend_hint)) {
        set req.grace = 10s;
    }
    return (hash);
}

sub ssedge_page {
    # the demo page, the dashboard and their files: public and the same for everyone, cached
    # for the relay's lifetime (a minute). The query only tells the page's script what to show
    # (the browser reads it): it is left out of the cache key and of the fetch.
    set req.url = regsub(req.url, "\?.*$", "");
    set req.backend_hint = relays.backend();
    return (hash);
}

sub vcl_hash {
    hash_data(req.url);
    if (req.http.X-Ssedge-Method) {
        # preflight answers differ by origin and by what is asked for
        hash_data(req.http.X-Ssedge-Method);
        hash_data(req.http.Origin);
        hash_data(req.http.Access-Control-Request-Method);
        hash_data(req.http.Access-Control-Request-Headers);
    }
    return (lookup);
}

sub vcl_hit {
    set req.http.X-Cache = "HIT";
}

sub vcl_miss {
    set req.http.X-Cache = "MISS";
}

sub vcl_pass {
    set req.http.X-Cache = "PASS";
}

sub vcl_deliver {
    call ssedge_cache_status;
    unset resp.http.Via;
    unset resp.http.X-Varnish;
}

sub ssedge_cache_status {
    # for operators and tests: HIT, MISS or PASS, and how often this object was served
    set resp.http.X-Cache = req.http.X-Cache;
    if (obj.hits > 0) {
        set resp.http.X-Cache = "HIT";
        set resp.http.X-Cache-Hits = obj.hits;
    }
}

sub vcl_synth {
    call ssedge_json_error;
    return (deliver);
}

sub ssedge_json_error {
    # errors are JSON like the relays' own; a 503 tells the client when to try again
    set resp.http.Content-Type = "application/json";
    set resp.http.Cache-Control = "no-store";
    if (resp.status == 503) {
        set resp.http.Retry-After = "1";
    }
    synthetic({"{"error":"edge","message":""} + resp.status + " " + resp.reason + {"""} + "}");
}

#######################################################################
# Backend side

sub vcl_backend_fetch {
    if (bereq.http.X-Ssedge-Method) {
        # a cache miss is fetched with GET by default: a preflight must stay OPTIONS
        set bereq.method = bereq.http.X-Ssedge-Method;
        unset bereq.http.X-Ssedge-Method;
    }
    if (bereq.url ~ "^/v1/streams/[^/]+/events" && bereq.method == "GET") {
        call ssedge_stream_timeouts;
    }
    if (bereq.url ~ "^/v1/streams/events\?(.*&)?topic=") {
        call ssedge_stream_timeouts;
    }
}

sub ssedge_stream_timeouts {
    # the relay sends `retry:` at once and a heartbeat every 15 s: a silent stream is a dead
    # relay. 60 s between bytes leaves four heartbeats of slack.
    set bereq.first_byte_timeout = 10s;
    set bereq.between_bytes_timeout = 60s;
}

sub vcl_backend_response {
    if (beresp.http.Content-Type ~ "^text/event-stream" && bereq.url !~ "^/v1/replay/") {
        call ssedge_unexpected_stream;
    }
    if (bereq.url ~ "^/v1/streams/[^/]+/events" && bereq.method == "GET") {
        call ssedge_stream_refused;
        call ssedge_stream_response;
    }
    if (bereq.url ~ "^/v1/streams/events\?(.*&)?topic=") {
        call ssedge_stream_refused;
        call ssedge_stream_response;
    }
    if (beresp.http.Cache-Control ~ "(?i)(private|no-store)") {
        call ssedge_never_store;
    }
    if (bereq.url ~ "^/v1/replay/") {
        call ssedge_replay_response;
    }
    if (bereq.url ~ "^/v1/(handshake|streams/[^/]+)(\?|$)") {
        call ssedge_json_response;
    }
    if (bereq.url ~ "^/(dashboard|static/[^/]+)?$") {
        call ssedge_page_response;
    }
    return (deliver);
}

sub ssedge_unexpected_stream {
    # an event stream by a route not meant for one (HAProxy sends every stream spelling it
    # knows to the relays and refuses the odd ones): never stored, never replayed to another
    # client, streamed as it comes
    set beresp.uncacheable = true;
    set beresp.ttl = 0s;
    set beresp.do_stream = true;
    set beresp.do_gzip = false;
    return (deliver);
}

sub ssedge_never_store {
    # the relays mark what no shared cache may keep: a private topic's metadata and replay
    # pages, errors (401 among them), streams. builtin.vcl would skip these too, but this VCL
    # returns before it: say it here. Not stored; for a minute the URL bypasses the waiting
    # list (hit-for-miss), and the next cacheable answer replaces the marker.
    set beresp.uncacheable = true;
    set beresp.ttl = 60s;
    return (deliver);
}

sub ssedge_stream_refused {
    # a relay that cannot take a stream now (draining, at its maximum, without Redis) says so
    # with X-Ssedge-Refused on a 200 that asks the browser to come back; before that answer
    # reaches the browser, another relay is tried (the director picks the next). A 5xx from a
    # relay (an older one, or a failure) is tried elsewhere too, and if it is the last word it
    # becomes the retry answer (ssedge_stream_retry_answer): an EventSource given a 503 would
    # close for good.
    if (beresp.http.X-Ssedge-Refused || beresp.status >= 500) {
        if (bereq.retries < 2) {
            return (retry);
        }
        if (beresp.status >= 500) {
            return (error(503, "no relay takes the stream"));
        }
    }
}

sub ssedge_stream_response {
    # deliver each event as it arrives: streaming on, nothing that buffers or rewrites
    set beresp.do_stream = true;
    set beresp.do_gzip = false;
    set beresp.do_gunzip = false;
    set beresp.do_esi = false;
    set beresp.uncacheable = true;
}

sub ssedge_replay_response {
    # a page that reaches the stream's head (not immutable) changes with the next publish: it
    # is kept for the second the replay service gives and never served past it. Varnish's
    # default grace (10 s) would serve it stale while refetching: an empty page cached at the
    # head once stood in for 11,000 newer events. Relays also check each page's
    # X-Ssedge-Through against what they need, so a page a moment old cannot end a catch-up.
    if (beresp.http.Cache-Control !~ "immutable") {
        set beresp.grace = 0s;
        set beresp.keep = 0s;
    }
}

sub ssedge_json_response {
    # served stale for up to an hour while every relay is down; kept a day for 304
    # revalidation with the relay's ETag
    set beresp.grace = 1h;
    set beresp.keep = 1d;
}

sub ssedge_page_response {
    # a page is served stale for up to an hour while every relay is down: the dashboard is
    # what an operator opens then; kept a day for 304 revalidation with the relay's ETag
    set beresp.grace = 1h;
    set beresp.keep = 1d;
}

sub vcl_backend_error {
    if (bereq.method == "POST" && bereq.url ~ "^/v1/streams/[^/]+/events") {
        call ssedge_publish_failed;
    }
    call ssedge_retry_elsewhere;
    if (bereq.url ~ "^/v1/streams/[^/]+/events" && bereq.method == "GET") {
        call ssedge_stream_retry_answer;
    }
    if (bereq.url ~ "^/v1/streams/events\?(.*&)?topic=") {
        call ssedge_stream_retry_answer;
    }
    call ssedge_unavailable;
}

sub ssedge_stream_retry_answer {
    # no relay answered a stream (none healthy, all refused or failed): the browser is told
    # to come back, in the one answer an EventSource retries: a 200 event stream that sends
    # `retry:` and ends (its Last-Event-ID is kept: no id is sent). The wait is spread over
    # 1-3 s so that a crowd refused together does not come back together. Not cached.
    set beresp.status = 200;
    set beresp.reason = "OK";
    set beresp.http.Content-Type = "text/event-stream";
    set beresp.http.Cache-Control = "private, no-store";
    set beresp.http.X-Ssedge-Refused = "edge";
    set beresp.http.Retry-After = "2";
    set beresp.ttl = 0s;
    set beresp.uncacheable = true;
    synthetic("retry: " + std.integer(real=std.random(1000, 3000)) +
              {"
: refused (edge): no relay can take this stream now
"});
    return (deliver);
}

sub ssedge_publish_failed {
    # A publish may be resent only if the relay surely did not apply it. Varnish 7.1 cannot
    # tell that here: a refused connection and a relay that took the request, wrote it and
    # died look the same to VCL (beresp.reason "Backend fetch failed", the same
    # beresp.backend, the same time taken to the millisecond; only the log's FetchError
    # differs, and VCL cannot read it). So, conservatively: a publish with an Idempotency-Key is retried on another
    # relay (a relay that did apply it answers the first answer again); one without is never
    # retried, and the publisher gets 503 to decide (the probes take a dead relay out within
    # about 2 s, so a refused connection costs keyless publishers that long of 503s).
    if (bereq.http.Idempotency-Key && bereq.retries < 2) {
        return (retry);
    }
    set beresp.http.Content-Type = "application/json";
    set beresp.http.Retry-After = "1";
    set beresp.http.Cache-Control = "no-store";
    set beresp.ttl = 0s;
    if (bereq.http.Idempotency-Key) {
        synthetic({"{"error":"unavailable","message":"no relay answered; retry with the same Idempotency-Key""} + "}");
    } else {
        synthetic({"{"error":"unavailable","message":"the relay failed: the events may or may not be published; send an Idempotency-Key to retry safely""} + "}");
    }
    return (deliver);
}

sub ssedge_retry_elsewhere {
    # a relay that refuses connections before its probe has noticed: the director picks
    # another node (publishes: ssedge_publish_failed)
    if (bereq.retries < 2 && bereq.backend != replay) {
        return (retry);
    }
}

sub ssedge_unavailable {
    set beresp.http.Content-Type = "application/json";
    set beresp.http.Retry-After = "1";
    set beresp.http.Cache-Control = "no-store";
    set beresp.ttl = 0s;
    synthetic({"{"error":"unavailable","message":"no relay answered; try again""} + "}");
    return (deliver);
}
