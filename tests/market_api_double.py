"""TEST DOUBLE of the Alpha Vantage and Polygon REST APIs — not the real services.

A real HTTP server (``http.server.ThreadingHTTPServer`` on 127.0.0.1, port 0, in a thread)
that answers in the documented formats of

* Alpha Vantage ``GET /query?function=TIME_SERIES_INTRADAY|TIME_SERIES_DAILY&symbol=&interval=
  &outputsize=&apikey=`` — ``"Meta Data"`` plus ``"Time Series (5min)"`` / ``"Time Series
  (Daily)"``, newest first, timestamps in US/Eastern, values as strings;
* Alpha Vantage ``GET /query?function=OVERVIEW&symbol=&apikey=`` — one flat object of
  strings (``Symbol``, ``AssetType``, ..., ``LatestQuarter``, ``MarketCapitalization``,
  ``PERatio``, ``EPS``...; ``"None"`` for a missing figure), ``{}`` for a symbol without one;
* Polygon ``GET /v2/aggs/ticker/{ticker}/range/{multiplier}/{timespan}/{from}/{to}?adjusted=
  &sort=&limit=&apiKey=`` — ``results`` of ``{v, vw, o, c, h, l, t, n}``, pages linked by a
  ``next_url`` that, like Polygon's, omits the API key.

Sources under test talk to it over real sockets with the real ``requests`` library; nothing is
patched. Tests script what the next request(s) get with :meth:`MarketApiDouble.script`
(one-shot, in order) or :meth:`MarketApiDouble.always` (sticky): a :class:`Reply` (any status
and body — the ``av_*`` and ``polygon_*`` helpers build every documented error and rate-limit
shape), a :class:`Slow` answer (sleeps past the client's timeout) or a :class:`Drop` (closes
the socket before or in the middle of the response). Every request is recorded in
:attr:`MarketApiDouble.requests` so tests can assert what was sent (key, pagination, params).
"""
from __future__ import annotations

import base64
import json
import random
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

EASTERN = ZoneInfo("US/Eastern")
AV_INTERVALS = ("1min", "5min", "15min", "30min", "60min")
POLYGON_PATH = re.compile(r"^/v2/aggs/ticker/([^/]+)/range/(\d+)/([a-z]+)/([^/]+)/([^/]+)$")

# (ts_ms, open, high, low, close, volume)
BarTuple = tuple[int, float, float, float, float, float]


# --------------------------------------------------------------------------- behaviours


@dataclass
class Reply:
    """Answer with this status and body (dict/list -> JSON, str/bytes as is)."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Slow:
    """Wait ``seconds`` (past the client's read timeout), then answer ``then`` (None: the
    normal answer)."""

    seconds: float
    then: Reply | None = None


@dataclass
class Drop:
    """Close the connection: ``mid_body`` sends the status, headers and half of the normal
    body first (an IncompleteRead for the client); otherwise nothing is sent at all."""

    mid_body: bool = True


@dataclass
class RecordedRequest:
    api: str  # "alphavantage", "polygon" or "other"
    path: str
    query: str
    params: dict[str, str]
    headers: dict[str, str]
    at: float


# Alpha Vantage's in-body error and rate-limit shapes (all served with HTTP 200).
def av_error_message(function: str = "TIME_SERIES_INTRADAY") -> Reply:
    return Reply(200, {"Error Message": "Invalid API call. Please retry or visit the "
                       "documentation (https://www.alphavantage.co/documentation/) for "
                       f"{function}."})


def av_missing_key() -> Reply:
    return Reply(200, {"Error Message": "the parameter apikey is invalid or missing. Please "
                       "claim your free API key on (https://www.alphavantage.co/support/#api-key)."
                       " It should take less than 20 seconds."})


def av_note_rate_limit() -> Reply:
    return Reply(200, {"Note": "Thank you for using Alpha Vantage! Our standard API call "
                       "frequency is 5 calls per minute and 500 calls per day. Please visit "
                       "https://www.alphavantage.co/premium/ if you would like to target a "
                       "higher API call frequency."})


def av_information_burst() -> Reply:
    return Reply(200, {"Information": "Thank you for using Alpha Vantage! Please consider "
                       "spreading out your free API requests more sparingly (1 request per "
                       "second). You may subscribe to any of the premium plans at "
                       "https://www.alphavantage.co/premium/ to lift the free key rate limit "
                       "(25 requests per day) and instantly unlock all premium endpoints"})


def av_information_daily_limit(api_key: str | None = None) -> Reply:
    """The daily-limit notice; when ``api_key`` is given it is echoed back, as Alpha Vantage
    has done ("We have detected your API key as ..."), to prove sources never repeat it."""
    who = f"We have detected your API key as {api_key} and our" if api_key else "Our"
    return Reply(200, {"Information": f"Thank you for using Alpha Vantage! {who} standard API "
                       "rate limit is 25 requests per day. Please subscribe to any of the "
                       "premium plans at https://www.alphavantage.co/premium/ to instantly "
                       "remove all daily rate limits."})


def av_information_premium() -> Reply:
    return Reply(200, {"Information": "Thank you for using Alpha Vantage! This is a premium "
                       "endpoint. You may subscribe to any of the premium plans at "
                       "https://www.alphavantage.co/premium/ to instantly unlock all premium "
                       "endpoints"})


def av_information_demo() -> Reply:
    return Reply(200, {"Information": "The **demo** API key is for demo purposes only. Please "
                       "claim your free API key at (https://www.alphavantage.co/support/#api-key)"
                       " to explore our full API offerings. It takes fewer than 20 seconds."})


# Polygon's error and rate-limit shapes.
def polygon_401() -> Reply:
    return Reply(401, {"status": "ERROR", "request_id": _rid(), "error": "Unknown API Key"})


def polygon_403() -> Reply:
    return Reply(403, {"status": "NOT_AUTHORIZED", "request_id": _rid(),
                       "message": "You are not entitled to this data. Please upgrade your plan "
                       "at https://polygon.io/pricing"})


def polygon_429(retry_after: float | None = None) -> Reply:
    headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else {}
    return Reply(429, {"status": "ERROR", "request_id": _rid(),
                       "error": "You've exceeded the maximum requests per minute, please wait "
                       "or upgrade your subscription to continue. https://polygon.io/pricing"},
                 headers)


def polygon_status_error(message: str = "Could not parse the time parameter: 'from'. Use "
                         "YYYY-MM-DD or Unix MS Timestamps") -> Reply:
    return Reply(200, {"status": "ERROR", "request_id": _rid(), "error": message})


def polygon_not_authorized() -> Reply:
    return Reply(200, {"status": "NOT_AUTHORIZED", "request_id": _rid(),
                       "message": "Your plan doesn't include this data timeframe. Please "
                       "upgrade your plan at https://polygon.io/pricing"})


def server_error(status: int = 503) -> Reply:
    return Reply(status, "<html><body>Service Unavailable</body></html>",
                 {"Content-Type": "text/html"})


def _rid() -> str:
    return uuid.uuid4().hex


# --------------------------------------------------------------------------- data helpers


def make_bars(start_ms: int, count: int, step_ms: int, *, price: float = 100.0,
              seed: int = 7) -> list[BarTuple]:
    """Deterministic, valid OHLCV bars starting at ``start_ms`` every ``step_ms``."""
    rng = random.Random(seed)
    out: list[BarTuple] = []
    close = price
    for i in range(count):
        o = close
        c = max(1.0, o * (1 + rng.uniform(-0.002, 0.002)))
        h = max(o, c) * (1 + rng.uniform(0, 0.001))
        low = min(o, c) * (1 - rng.uniform(0, 0.001))
        out.append((start_ms + i * step_ms, round(o, 4), round(h, 4), round(low, 4),
                    round(c, 4), float(rng.randint(100, 10_000))))
        close = c
    # rounding can push open/close a hair outside [low, high]; widen to keep bars valid
    return [(t, o, max(h, o, c), min(low, o, c), c, v) for t, o, h, low, c, v in out]


def eastern_ms(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> int:
    """Epoch ms of a wall-clock time in US/Eastern (how Alpha Vantage labels bars)."""
    return int(datetime(year, month, day, hour, minute, tzinfo=EASTERN).timestamp() * 1000)


# --------------------------------------------------------------------------- the server


def av_article(title: str, ts_ms: int, scores: dict[str, tuple[float, float]], *,
               url: str | None = None, source: str = "Newswire") -> dict[str, Any]:
    """One NEWS_SENTIMENT feed article; ``scores``: ticker -> (sentiment, relevance), written
    as strings like Alpha Vantage does; ``time_published`` in US/Eastern."""
    stamp = datetime.fromtimestamp(ts_ms / 1000, EASTERN).strftime("%Y%m%dT%H%M%S")
    return {"title": title, "url": url or f"https://news.test/{uuid.uuid4().hex[:12]}",
            "time_published": stamp, "authors": ["A. Writer"], "summary": title,
            "source": source, "overall_sentiment_score": 0.0,
            "overall_sentiment_label": "Neutral",
            "ticker_sentiment": [{"ticker": t, "relevance_score": f"{r:.6f}",
                                  "ticker_sentiment_score": f"{s:.6f}",
                                  "ticker_sentiment_label": "Neutral"}
                                 for t, (s, r) in scores.items()]}


def av_overview(symbol: str, *, latest_quarter: str = "2025-09-30", **figures: Any) -> dict:
    """An OVERVIEW answer in Alpha Vantage's shape: every documented field, values as strings;
    ``figures`` override Alpha Vantage field names (``PERatio=21.5``, ``EPS=None`` -> "None")."""
    body: dict[str, Any] = {
        "Symbol": symbol, "AssetType": "Common Stock", "Name": f"{symbol} Corp",
        "Description": f"{symbol} makes things.", "CIK": "51143", "Exchange": "NYSE",
        "Currency": "USD", "Country": "USA", "Sector": "TECHNOLOGY",
        "Industry": "COMPUTER & OFFICE EQUIPMENT", "Address": "1 MAIN ST, ARMONK, NY, US",
        "OfficialSite": "https://example.test", "FiscalYearEnd": "December",
        "LatestQuarter": latest_quarter, "MarketCapitalization": "250000000000",
        "EBITDA": "15000000000", "PERatio": "24.5", "PEGRatio": "3.1", "BookValue": "27.3",
        "DividendPerShare": "6.68", "DividendYield": "0.0251", "EPS": "9.61",
        "RevenuePerShareTTM": "68.4", "ProfitMargin": "0.141", "OperatingMarginTTM": "0.18",
        "ReturnOnAssetsTTM": "0.052", "ReturnOnEquityTTM": "0.36", "RevenueTTM": "63000000000",
        "GrossProfitTTM": "35000000000", "DilutedEPSTTM": "9.61",
        "QuarterlyEarningsGrowthYOY": "0.12", "QuarterlyRevenueGrowthYOY": "0.015",
        "AnalystTargetPrice": "250.0", "AnalystRatingStrongBuy": "3", "AnalystRatingBuy": "7",
        "AnalystRatingHold": "9", "AnalystRatingSell": "1", "AnalystRatingStrongSell": "1",
        "TrailingPE": "24.5", "ForwardPE": "22.1", "PriceToSalesRatioTTM": "3.9",
        "PriceToBookRatio": "8.6", "EVToRevenue": "4.6", "EVToEBITDA": "19.8", "Beta": "0.71",
        "52WeekHigh": "265.0", "52WeekLow": "180.0", "50DayMovingAverage": "240.1",
        "200DayMovingAverage": "225.7", "SharesOutstanding": "930000000",
        "DividendDate": "2025-12-10", "ExDividendDate": "2025-11-10"}
    for name, value in figures.items():
        body[name] = "None" if value is None else str(value)
    return body


class MarketApiDouble:
    """The fake API server; use as a context manager or call :meth:`start` / :meth:`close`."""

    def __init__(self, *, av_key: str = "av-test-key", polygon_key: str = "polygon-test-key"):
        self.av_key = av_key
        self.polygon_key = polygon_key
        #: (symbol, "5min" | "daily") -> bars oldest first
        self.av_bars: dict[tuple[str, str], list[BarTuple]] = {}
        #: ticker -> NEWS_SENTIMENT feed articles (any order; served newest first)
        self.av_news: dict[str, list[dict[str, Any]]] = {}
        #: symbol -> OVERVIEW answer (see :func:`av_overview`); others get ``{}``
        self.av_overview: dict[str, dict[str, Any]] = {}
        #: (ticker, multiplier, timespan) -> bars oldest first
        self.polygon_bars: dict[tuple[str, int, str], list[BarTuple]] = {}
        #: Polygon caps each page at min(limit, polygon_page_size)
        self.polygon_page_size = 50_000
        self.polygon_status = "OK"
        #: host used in next_url (tests may point it elsewhere to check re-rooting)
        self.next_url_base: str | None = None
        self.requests: list[RecordedRequest] = []
        self._scripts: dict[str, list[Any]] = {"alphavantage": [], "polygon": []}
        self._sticky: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle

    def start(self) -> "MarketApiDouble":
        double = self

        class Handler(_Handler):
            owner = double

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name="market-api-double", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._closing.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "MarketApiDouble":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def base_url(self) -> str:
        assert self._server is not None, "start() the double first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # -- scripting

    def script(self, api: str, *behaviours: Any) -> None:
        """Queue one-shot behaviours for the next requests to ``api`` ("alphavantage" or
        "polygon"), used in order before any sticky behaviour or the normal answer; a None
        in the sequence lets that request get the normal answer."""
        with self._lock:
            self._scripts[api].extend(behaviours)

    def always(self, api: str, behaviour: Any | None) -> None:
        """Answer every request to ``api`` with ``behaviour`` (None: back to normal)."""
        with self._lock:
            if behaviour is None:
                self._sticky.pop(api, None)
            else:
                self._sticky[api] = behaviour

    def requests_for(self, api: str) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.api == api]

    # -- data

    def set_av_bars(self, symbol: str, interval: str, bars: list[BarTuple]) -> None:
        """``interval``: an Alpha Vantage interval ("5min") or "daily"."""
        with self._lock:
            self.av_bars[(symbol, interval)] = sorted(bars)

    def set_av_news(self, ticker: str, articles: list[dict[str, Any]]) -> None:
        """Articles in Alpha Vantage's feed shape (see :func:`av_article`)."""
        with self._lock:
            self.av_news[ticker] = list(articles)

    def set_av_overview(self, symbol: str, body: dict[str, Any]) -> None:
        with self._lock:
            self.av_overview[symbol] = dict(body)

    def set_polygon_bars(self, ticker: str, multiplier: int, timespan: str,
                         bars: list[BarTuple]) -> None:
        with self._lock:
            self.polygon_bars[(ticker, multiplier, timespan)] = sorted(bars)

    # -- request handling (called from handler threads)

    def _next_behaviour(self, api: str) -> Any:
        with self._lock:
            queue = self._scripts.get(api)
            if queue:
                return queue.pop(0)
            return self._sticky.get(api)

    def _record(self, api: str, path: str, query: str, headers: dict[str, str]) -> None:
        params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
        with self._lock:
            self.requests.append(RecordedRequest(api, path, query, params, headers, time.time()))

    def _normal_answer(self, api: str, path: str, params: dict[str, str],
                       headers: dict[str, str]) -> Reply:
        if api == "alphavantage":
            return self._alphavantage(params)
        if api == "polygon":
            return self._polygon(path, params, headers)
        return Reply(404, {"status": "NOT_FOUND", "message": "Not found"})

    def _alphavantage(self, params: dict[str, str]) -> Reply:
        if params.get("apikey") != self.av_key:
            return av_missing_key()
        function = params.get("function", "")
        symbol = params.get("symbol", "")
        size = params.get("outputsize", "compact")
        if function == "TIME_SERIES_INTRADAY":
            interval = params.get("interval", "")
            if interval not in AV_INTERVALS:
                return av_error_message(function)
            key, series_name = (symbol, interval), f"Time Series ({interval})"
        elif function == "NEWS_SENTIMENT":
            return self._av_news_feed(params)
        elif function == "OVERVIEW":
            with self._lock:
                return Reply(200, dict(self.av_overview.get(symbol, {})))
        elif function == "TIME_SERIES_DAILY":
            key, series_name, interval = (symbol, "daily"), "Time Series (Daily)", "daily"
        else:
            return av_error_message(function or "this function")
        with self._lock:
            known = key in self.av_bars
            bars = list(self.av_bars.get(key, ()))
        if not known:
            return av_error_message(function)
        if size == "compact":
            bars = bars[-100:]
        series: dict[str, dict[str, str]] = {}
        for t, o, h, low, c, v in reversed(bars):  # Alpha Vantage lists newest first
            local = datetime.fromtimestamp(t / 1000, EASTERN)
            stamp = local.strftime("%Y-%m-%d") if interval == "daily" else \
                local.strftime("%Y-%m-%d %H:%M:%S")
            series[stamp] = {"1. open": f"{o:.4f}", "2. high": f"{h:.4f}", "3. low": f"{low:.4f}",
                             "4. close": f"{c:.4f}", "5. volume": f"{int(v)}"}
        last = next(iter(series), "")
        size_label = "Compact" if size == "compact" else "Full size"
        if interval == "daily":
            meta = {"1. Information": "Daily Prices (open, high, low, close) and Volumes",
                    "2. Symbol": symbol, "3. Last Refreshed": last, "4. Output Size": size_label,
                    "5. Time Zone": "US/Eastern"}
        else:
            meta = {"1. Information": f"Intraday ({interval}) open, high, low, close prices "
                    "and volume", "2. Symbol": symbol, "3. Last Refreshed": last,
                    "4. Interval": interval, "5. Output Size": size_label,
                    "6. Time Zone": "US/Eastern"}
        return Reply(200, {"Meta Data": meta, series_name: series})

    def _av_news_feed(self, params: dict[str, str]) -> Reply:
        """NEWS_SENTIMENT: articles mentioning every ticker asked for, within time_from /
        time_to (read as US/Eastern, like time_published here), newest first, ``limit``."""
        tickers = [t for t in params.get("tickers", "").split(",") if t]
        with self._lock:
            pools = [self.av_news.get(t, []) for t in tickers] or [[]]
        urls = set.intersection(*({a["url"] for a in pool} for pool in pools))
        feed = {a["url"]: a for a in pools[0] if a["url"] in urls}.values()
        lo, hi = params.get("time_from", ""), params.get("time_to", "")
        feed = [a for a in feed if (not lo or a["time_published"][:13] >= lo)
                and (not hi or a["time_published"][:13] <= hi)]
        feed.sort(key=lambda a: a["time_published"], reverse=True)
        feed = feed[: int(params.get("limit", "50") or 50)]
        return Reply(200, {"items": str(len(feed)),
                           "sentiment_score_definition": "x <= -0.35: Bearish; ...",
                           "relevance_score_definition": "0 < x <= 1, with a higher score "
                           "indicating higher relevance.", "feed": feed})

    def _polygon(self, path: str, params: dict[str, str], headers: dict[str, str]) -> Reply:
        key = params.get("apiKey") or headers.get("authorization", "").removeprefix("Bearer ")
        if not key:
            return Reply(401, {"status": "ERROR", "request_id": _rid(),
                               "error": "API Key was not provided"})
        if key != self.polygon_key:
            return polygon_401()
        m = POLYGON_PATH.match(path)
        if not m:
            return Reply(404, {"status": "NOT_FOUND", "request_id": _rid(),
                               "message": "Route not found"})
        ticker, multiplier, timespan, start_text, end_text = m.groups()
        cursor = _decode_cursor(params.get("cursor"))
        opts = {**params, **cursor}
        try:
            start = _edge_ms(start_text, end=False)
            end = _edge_ms(end_text, end=True)
            limit = int(opts.get("limit", 5000))
        except ValueError:
            return polygon_status_error()
        adjusted = opts.get("adjusted", "true")
        sort = opts.get("sort", "asc")
        with self._lock:
            all_bars = list(self.polygon_bars.get((ticker, int(multiplier), timespan), ()))
        window = [b for b in all_bars if start <= b[0] <= end]
        if sort == "desc":
            window.reverse()
        page_size = max(1, min(limit, self.polygon_page_size))
        page, rest = window[:page_size], window[page_size:]
        body: dict[str, Any] = {"ticker": ticker, "queryCount": len(page),
                                "resultsCount": len(page), "adjusted": adjusted == "true",
                                "status": self.polygon_status, "request_id": _rid(),
                                "count": len(page)}
        if page:
            body["results"] = [{"v": v, "vw": round((h + low + c) / 3, 4), "o": o, "c": c,
                                "h": h, "l": low, "t": t, "n": 1 + int(v) // 100}
                               for t, o, h, low, c, v in page]
        if rest:
            next_from = rest[0][0]
            token = base64.urlsafe_b64encode(json.dumps(
                {"limit": str(limit), "sort": sort, "adjusted": adjusted}).encode()).decode()
            base = self.next_url_base or self.base_url
            body["next_url"] = (f"{base}/v2/aggs/ticker/{ticker}/range/{multiplier}/"
                                f"{timespan}/{next_from}/{end_text}?cursor={token}")
        return Reply(200, body)


class _Handler(BaseHTTPRequestHandler):
    owner: MarketApiDouble
    protocol_version = "HTTP/1.1"  # keep-alive, like the real APIs
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    timeout = 10  # idle keep-alive connections end on their own

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # request lines carry API keys; a test double keeps quiet

    def do_GET(self) -> None:  # noqa: N802
        owner = self.owner
        parts = urlsplit(self.path)
        api = ("alphavantage" if parts.path == "/query"
               else "polygon" if parts.path.startswith("/v2/aggs/") else "other")
        headers = {k.lower(): v for k, v in self.headers.items()}
        owner._record(api, parts.path, parts.query, headers)
        params = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        behaviour = owner._next_behaviour(api) if api != "other" else None
        try:
            if isinstance(behaviour, Slow):
                if owner._closing.wait(behaviour.seconds):
                    return
                behaviour = behaviour.then
            if isinstance(behaviour, Drop):
                self._drop(behaviour, owner._normal_answer(api, parts.path, params, headers))
                return
            reply = behaviour if isinstance(behaviour, Reply) else \
                owner._normal_answer(api, parts.path, params, headers)
            self._send(reply)
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            self.close_connection = True  # the client gave up (e.g. after its read timeout)

    def _encode(self, reply: Reply) -> tuple[bytes, str]:
        if isinstance(reply.body, (dict, list)):
            return json.dumps(reply.body).encode(), "application/json"
        if isinstance(reply.body, bytes):
            return reply.body, "application/octet-stream"
        return str(reply.body or "").encode(), "text/plain; charset=utf-8"

    def _send(self, reply: Reply) -> None:
        data, content_type = self._encode(reply)
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.headers.get("Content-Type", content_type))
        self.send_header("Content-Length", str(len(data)))
        for name, value in reply.headers.items():
            if name.lower() != "content-type":
                self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _drop(self, drop: Drop, reply: Reply) -> None:
        if drop.mid_body:
            data, content_type = self._encode(reply)
            self.send_response(reply.status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _decode_cursor(token: str | None) -> dict[str, str]:
    if not token:
        return {}
    try:
        return json.loads(base64.urlsafe_b64decode(token.encode()))
    except ValueError:
        return {}


def _edge_ms(text: str, *, end: bool) -> int:
    """Polygon accepts YYYY-MM-DD (a whole day, inclusive) or epoch milliseconds."""
    if text.isdigit():
        return int(text)
    day = datetime.fromisoformat(text).replace(tzinfo=timezone.utc)
    if end:
        day += timedelta(days=1)
        return int(day.timestamp() * 1000) - 1
    return int(day.timestamp() * 1000)
