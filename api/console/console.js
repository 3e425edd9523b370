// The auditors' console: the public HTTP API only, rendered with textContent
// throughout, since topic names, payloads and subscriber ids come from whoever
// may publish or subscribe.
"use strict";

(() => {
  const TOKEN_KEY = "eventhub-console-token";
  const NDJSON = "application/x-ndjson";
  const FILTERS = ["after_seq", "before_seq", "since", "until", "order", "limit"];

  const $ = (id) => document.getElementById(id);

  const state = {
    token: sessionStorage.getItem(TOKEN_KEY) || null,
    topic: null,
    filters: { order: "asc", limit: "100" },
    pageUrl: null,
    previous: [],
    next: null,
    lastSeq: null,
    source: null,
    ownSubscriber: null,
    catchingUp: false,
    catchUpAgain: false,
    topicsNext: null,
    exportUrl: null,
    generation: 0,
  };

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  function plural(n, word) {
    return `${n} ${word}${n === 1 ? "" : "s"}`;
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  // Each segment encoded on its own: topics may hold "/", which the routes take as is.
  function topicPath(topic) {
    return topic.split("/").map(encodeURIComponent).join("/");
  }

  function authHeaders(extra) {
    const headers = Object.assign({}, extra);
    if (state.token) headers.Authorization = "Bearer " + state.token;
    return headers;
  }

  async function errorOf(response) {
    let code = "http_" + response.status;
    let message = response.statusText || "request failed";
    const text = await response.text().catch(() => "");
    try {
      const body = JSON.parse(text);
      if (body && body.error) {
        code = String(body.error.code);
        message = String(body.error.message);
      } else if (body && body.detail) {
        message = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
      }
    } catch (_) {
      if (text) message = text.slice(0, 300);
    }
    return new ApiError(response.status, code, message);
  }

  async function request(path, accept) {
    let response;
    try {
      response = await fetch(path, {
        headers: authHeaders({ Accept: accept || "application/json" }),
        cache: "no-store",
        credentials: "same-origin",
      });
    } catch (exc) {
      throw new ApiError(0, "network_error", "the hub did not answer (" + exc.message + ")");
    }
    if (!response.ok) {
      const error = await errorOf(response);
      if (error.status === 401) askForToken(error.message);
      throw error;
    }
    return response;
  }

  async function getJson(path) {
    const response = await request(path);
    return response.json();
  }

  function showError(what, exc) {
    const box = $("error");
    let text;
    if (exc instanceof ApiError) {
      text = exc.status
        ? `${what}: ${exc.status} ${exc.code}: ${exc.message}`
        : `${what}: ${exc.message}`;
    } else {
      text = `${what}: ${exc && exc.message ? exc.message : String(exc)}`;
    }
    box.textContent = text;
    box.hidden = false;
  }

  function clearError() {
    $("error").hidden = true;
    $("error").textContent = "";
  }

  // ---- token ----

  function askForToken(reason) {
    $("token-panel").hidden = false;
    $("token-reason").textContent = state.token
      ? "The hub refused the token: " + reason
      : "This hub needs a token to show its data.";
    $("token-toggle").hidden = true;
    if (document.activeElement !== $("token")) $("token").focus();
  }

  function applyToken(value) {
    state.token = value || null;
    if (state.token) sessionStorage.setItem(TOKEN_KEY, state.token);
    else sessionStorage.removeItem(TOKEN_KEY);
    $("token").value = "";
    $("token-panel").hidden = true;
    $("token-toggle").hidden = !state.token;
    // The focused field has just been hidden: keep keyboard users in the page.
    $("topics-heading").focus();
    clearError();
    loadTopics();
    if (state.topic) openTopic(state.topic, { keepFilters: true });
  }

  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("token").value.trim();
    if (value) applyToken(value);
  });
  $("token-forget").addEventListener("click", () => {
    applyToken(null);
  });
  $("token-toggle").addEventListener("click", () => {
    $("token-panel").hidden = false;
    $("token-reason").textContent = "Enter another token.";
    $("token-toggle").hidden = true;
    $("token").focus();
  });

  // ---- topics ----

  function topicRow(info) {
    const item = el("li");
    const button = el("button", "topic-row");
    button.type = "button";
    button.dataset.testid = "topic-row";
    button.dataset.topic = info.topic;
    button.setAttribute("aria-current", String(info.topic === state.topic));
    button.append(el("span", "topic-name", info.topic));
    const counts = `${plural(info.event_count, "event")} · last seq ${info.last_seq} · ` +
      `${info.subscriber_count} subscribed` +
      (info.last_published_at ? ` · last ${info.last_published_at}` : "");
    button.append(el("span", "topic-counts", counts));
    button.addEventListener("click", () => openTopic(info.topic));
    item.append(button);
    return item;
  }

  async function loadTopics(more) {
    const path = more && state.topicsNext ? state.topicsNext : "/v1/topics?limit=100";
    try {
      const body = await getJson(path);
      const list = $("topics");
      if (!more) list.replaceChildren();
      for (const info of body.topics) list.append(topicRow(info));
      state.topicsNext = sameOriginApi(body.next);
      $("topics-more").hidden = !state.topicsNext;
      $("topics-empty").hidden = list.children.length > 0;
    } catch (exc) {
      showError("Listing topics", exc);
    }
  }

  function markCurrentTopic() {
    for (const button of document.querySelectorAll(".topic-row")) {
      button.setAttribute("aria-current", String(button.dataset.topic === state.topic));
    }
  }

  $("topics-refresh").addEventListener("click", () => { clearError(); loadTopics(); });
  $("topics-more").addEventListener("click", () => loadTopics(true));

  // Links the hub sends back are followed only when they are its own API paths.
  function sameOriginApi(link) {
    return typeof link === "string" && link.startsWith("/v1/") ? link : null;
  }

  // ---- a topic ----

  function historyUrl(filters, withLimit) {
    const params = new URLSearchParams();
    for (const name of FILTERS) {
      const value = (filters[name] || "").trim();
      if (!value || (name === "limit" && !withLimit)) continue;
      params.set(name, value);
    }
    const query = params.toString();
    return `/v1/topics/${topicPath(state.topic)}/events` + (query ? "?" + query : "");
  }

  function readFilters() {
    const filters = {};
    for (const name of FILTERS) filters[name] = $("filters").elements[name].value;
    return filters;
  }

  function writeFilters(filters) {
    for (const name of FILTERS) {
      $("filters").elements[name].value = filters[name] || (name === "order" ? "asc" : "");
    }
  }

  function openTopic(topic, options) {
    const keep = options && options.keepFilters;
    clearError();
    state.topic = topic;
    state.generation += 1;
    history.replaceState(null, "", "#topic=" + encodeURIComponent(topic));
    markCurrentTopic();
    $("topic-heading").textContent = topic;
    $("topic-hint").hidden = true;
    $("topic-body").hidden = false;
    resetVerify();
    resetExport();
    if (!keep) {
      state.filters = { order: "asc", limit: "100" };
      writeFilters(state.filters);
    }
    stopLive();
    loadPage(historyUrl(state.filters, true), []);
    loadSubscribers();
    if (!keep) $("topic-heading").focus();
  }

  $("filters").addEventListener("submit", (event) => {
    event.preventDefault();
    if (!state.topic) return;
    clearError();
    state.filters = readFilters();
    resetExport();
    loadPage(historyUrl(state.filters, true), []);
  });
  $("filters").addEventListener("reset", () => {
    // After the browser has cleared the fields.
    setTimeout(() => {
      writeFilters({ order: "asc", limit: "100" });
    });
  });

  function eventRow(event, fresh) {
    const item = el("li", fresh ? "event fresh" : "event");
    item.dataset.testid = "event-row";
    item.dataset.seq = String(event.seq);
    const head = el("div", "event-head");
    head.append(el("span", "event-seq", "#" + event.seq));
    if (event.published_at) head.append(el("time", "event-time", event.published_at));
    if (event.publisher !== undefined) {
      head.append(el("span", "event-publisher",
        event.publisher === null ? "publisher: none" : "publisher: " + event.publisher));
    }
    if (event.exclude) head.append(el("span", "event-exclude", "excludes " + event.exclude));
    item.append(head);
    item.append(el("pre", "event-payload", JSON.stringify(event.payload, null, 2)));
    if (event.hash) item.append(el("code", "event-hash", "hash " + event.hash));
    return item;
  }

  async function loadPage(url, previous) {
    const generation = state.generation;
    const filters = state.filters;
    $("page-info").textContent = "Loading…";
    try {
      const body = await getJson(url);
      if (generation !== state.generation) return;
      state.pageUrl = url;
      state.previous = previous;
      state.next = sameOriginApi(body.next);
      const list = $("events");
      list.replaceChildren(...body.events.map((event) => eventRow(event, false)));
      state.lastSeq = body.events.length ? body.events[body.events.length - 1].seq : null;
      if (state.lastSeq === null && filters.after_seq) state.lastSeq = Number(filters.after_seq);
      updatePager();
      followIfAtEnd();
    } catch (exc) {
      if (generation !== state.generation) return;
      $("page-info").textContent = "";
      showError("Reading history", exc);
    }
  }

  function updatePager() {
    const shown = $("events").children.length;
    const part = state.previous.length ? `page ${state.previous.length + 1}` : "first page";
    $("page-info").textContent = shown
      ? `${plural(shown, "event")} shown (${part}${state.next ? "; more follow" : "; last page"}).`
      : `No events match (${part}).`;
    $("page-next").disabled = !state.next;
    $("page-prev").disabled = state.previous.length === 0;
    $("page-first").disabled = state.previous.length === 0;
  }

  $("page-next").addEventListener("click", () => {
    if (state.next) loadPage(state.next, [...state.previous, state.pageUrl]);
  });
  $("page-prev").addEventListener("click", () => {
    if (!state.previous.length) return;
    const previous = state.previous.slice(0, -1);
    loadPage(state.previous[state.previous.length - 1], previous);
  });
  $("page-first").addEventListener("click", () => {
    if (state.previous.length) loadPage(state.previous[0], []);
  });

  // ---- following live ----

  function setLive(stateName, text) {
    const live = $("live");
    live.dataset.state = stateName;
    live.textContent = text;
  }

  // New events belong on this page only when it is the last one in ascending
  // order and no upper bound keeps them out.
  function canFollow() {
    const f = state.filters;
    return state.topic && (f.order || "asc") === "asc" && !state.next &&
      !(f.before_seq || "").trim() && !(f.until || "").trim();
  }

  function followIfAtEnd() {
    if (!canFollow()) {
      stopLive();
      setLive("off", "not live (only the last page, oldest first, follows)");
      return;
    }
    if (state.source && state.source.topic === state.topic) return;
    startLive();
  }

  function startLive() {
    stopLive();
    const params = new URLSearchParams();
    params.append("topic", state.topic);
    // EventSource cannot set headers: the token goes in the query.
    if (state.token) params.append("access_token", state.token);
    const url = "/v1/stream?" + params.toString();
    const source = new EventSource(url);
    source.topic = state.topic;
    state.source = source;
    setLive("connecting", "connecting…");
    source.addEventListener("ready", (message) => {
      if (state.source !== source) return;
      try { state.ownSubscriber = JSON.parse(message.data).subscriber; } catch (_) { /* shown as is */ }
      setLive("live", "live");
      // Whatever was published between the page's read and the stream's start.
      catchUp();
      loadSubscribers();
    });
    source.addEventListener("gap", (message) => {
      if (state.source !== source) return;
      showError("Live stream", new Error("retention deleted events the stream needed: " + message.data));
    });
    source.onmessage = () => {
      if (state.source === source) catchUp();
    };
    source.onerror = () => {
      if (state.source !== source) return;
      if (source.readyState === EventSource.CLOSED) {
        state.source = null;
        setLive("error", "not following (the stream was refused)");
        explainStreamFailure(url);
      } else {
        setLive("connecting", "reconnecting…");
      }
    };
  }

  // An EventSource tells nothing of why it was refused; ask once with fetch for
  // the status and the error body, and drop the stream at once.
  async function explainStreamFailure(url) {
    const controller = new AbortController();
    try {
      const response = await fetch(url.replace(/([?&])access_token=[^&]*&?/, "$1"), {
        headers: authHeaders({ Accept: "text/event-stream" }),
        signal: controller.signal,
        cache: "no-store",
      });
      if (!response.ok) {
        const error = await errorOf(response);
        if (error.status === 401) askForToken(error.message);
        showError("Following live", error);
      } else {
        showError("Following live", new Error("the stream closed; reopen the topic to follow it again"));
      }
    } catch (exc) {
      showError("Following live", exc);
    } finally {
      controller.abort();
    }
  }

  function stopLive() {
    if (state.source) {
      state.source.close();
      state.source = null;
    }
    state.ownSubscriber = null;
    setLive("off", "not following");
  }

  // The stream only says that something arrived; the rows come from history,
  // which also carries publisher and hash, and misses nothing between messages.
  async function catchUp() {
    if (state.catchingUp) {
      state.catchUpAgain = true;
      return;
    }
    state.catchingUp = true;
    const generation = state.generation;
    try {
      do {
        state.catchUpAgain = false;
        if (!canFollow()) return;
        const filters = Object.assign({}, state.filters, { limit: "1000", order: "asc" });
        if (state.lastSeq !== null) filters.after_seq = String(state.lastSeq);
        const body = await getJson(historyUrl(filters, true));
        if (generation !== state.generation || !canFollow()) return;
        const list = $("events");
        for (const event of body.events) {
          if (state.lastSeq !== null && event.seq <= state.lastSeq) continue;
          list.append(eventRow(event, true));
          state.lastSeq = event.seq;
        }
        if (body.next) state.catchUpAgain = true;
        updatePager();
      } while (state.catchUpAgain);
    } catch (exc) {
      showError("Following live", exc);
    } finally {
      state.catchingUp = false;
    }
  }

  // ---- subscribers ----

  async function loadSubscribers() {
    if (!state.topic) return;
    const topic = state.topic;
    const list = $("subscribers");
    try {
      const body = await getJson(`/v1/topics/${topicPath(topic)}/subscribers`);
      if (topic !== state.topic) return;
      list.replaceChildren();
      for (const id of body.subscribers) {
        const item = el("li", null, id);
        if (id === state.ownSubscriber) item.append(el("span", "note", " (this console's stream)"));
        item.dataset.testid = "subscriber";
        list.append(item);
      }
      if (!body.subscribers.length) list.append(el("li", "note", "Nobody is subscribed now."));
    } catch (exc) {
      if (topic !== state.topic) return;
      list.replaceChildren(el("li", "note", "Not shown: " + exc.message));
      if (!(exc instanceof ApiError) || exc.status !== 403) showError("Listing subscribers", exc);
    }
  }

  $("subs-refresh").addEventListener("click", loadSubscribers);

  // ---- verification ----

  function resetVerify() {
    const status = $("verify-status");
    status.dataset.state = "none";
    status.textContent = "not checked";
    $("verify-detail").textContent = "";
  }

  $("verify").addEventListener("click", async () => {
    if (!state.topic) return;
    const topic = state.topic;
    const status = $("verify-status");
    status.dataset.state = "none";
    status.textContent = "checking…";
    $("verify-detail").textContent = "";
    try {
      const body = await getJson(`/v1/topics/${topicPath(topic)}/verify`);
      if (topic !== state.topic) return;
      status.dataset.state = body.ok ? "ok" : "bad";
      status.textContent = body.ok ? "verified" : "broken";
      $("verify-detail").textContent = body.ok
        ? `seq ${body.from_seq} to ${body.through_seq} hold; head hash ${body.head_hash}`
        : `first bad seq ${body.first_bad_seq}; seq ${body.from_seq} to ${body.through_seq} hold, ` +
          `last good hash ${body.head_hash}`;
    } catch (exc) {
      if (topic !== state.topic) return;
      status.dataset.state = "none";
      status.textContent = "not checked";
      showError("Verifying", exc);
    }
  });

  // ---- export ----

  function resetExport() {
    if (state.exportUrl) URL.revokeObjectURL(state.exportUrl);
    state.exportUrl = null;
    const link = $("export-link");
    link.hidden = true;
    link.removeAttribute("href");
    link.textContent = "";
  }

  $("export").addEventListener("click", async () => {
    if (!state.topic) return;
    const topic = state.topic;
    const button = $("export");
    button.disabled = true;
    resetExport();
    try {
      const response = await request(historyUrl(state.filters, false), NDJSON);
      const blob = await response.blob();
      if (topic !== state.topic) return;
      const text = await blob.text();
      const lines = text ? text.split("\n").filter((line) => line).length : 0;
      const name = topic.replace(/[^A-Za-z0-9._-]+/g, "_") + ".ndjson";
      state.exportUrl = URL.createObjectURL(new Blob([text], { type: NDJSON }));
      const link = $("export-link");
      link.href = state.exportUrl;
      link.download = name;
      link.textContent = `Save ${name} (${plural(lines, "event")}, ${blob.size} bytes)`;
      link.hidden = false;
      link.click();
    } catch (exc) {
      showError("Exporting", exc);
    } finally {
      button.disabled = false;
    }
  });

  // ---- start ----

  window.addEventListener("error", (event) => {
    showError("The console failed", new Error(event.message));
  });
  window.addEventListener("unhandledrejection", (event) => {
    showError("The console failed", event.reason instanceof Error ? event.reason : new Error(String(event.reason)));
  });

  $("token-toggle").hidden = !state.token;
  loadTopics();
  const match = /^#topic=(.+)$/.exec(location.hash);
  if (match) {
    try {
      openTopic(decodeURIComponent(match[1]), { keepFilters: true });
    } catch (_) {
      history.replaceState(null, "", location.pathname);
    }
  }
})();
