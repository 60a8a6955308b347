// tcpchat's web page: the room over a WebSocket that speaks line mode, one line a frame.
//
// What it relies on (docs/PROTOCOL.md): `tags` numbers every event, so the page shows
// each number once whatever the connections deliver; `since=` resumes after the last
// number shown; `token=` takes the name back from the ghost of a dropped connection;
// `@id=` makes a resent line land once; `members` gives who is in the room.
//
// Everything from the server reaches the page through textContent and createElement:
// never innerHTML, so a name or a message is always shown as the text it is.
"use strict";

(() => {
  /** Events replayed when the page opens. */
  const HISTORY = 100;
  /** Reconnect backoff: the first delay, doubled per failure up to the cap, jittered. */
  const RETRY_FIRST_MS = 200;
  const RETRY_MAX_MS = 5000;
  /** A connection that stayed this long starts the backoff afresh when it drops. */
  const STABLE_MS = 10000;
  /** A connection that is not welcomed within this is given up and retried. */
  const WELCOME_TIMEOUT_MS = 15000;
  /** Silence after which a connection counts as lost: the server pings every 15 s. */
  const SILENCE_MS = 40000;
  /** Events kept on screen; older ones are dropped from the top. */
  const MAX_SHOWN = 5000;
  /** The server's line limit (docs/PROTOCOL.md), corrected by its own error text. */
  let maxLineBytes = 4096;
  /** Error codes after which trying again can work; every other code is final. */
  const RETRY_CODES = new Set([
    "too-slow",
    "handshake-timeout",
    "history-unavailable",
    "message-too-long",
  ]);
  const WELCOME = /^Welcome to the "(.*)" Chat Server!$/;
  /** A name has no whitespace and no ':' (docs/PROTOCOL.md, "Names"). */
  const NAME = /^[^\s:]+$/u;
  const JOINED = " has joined the chat.";
  const LEFT = " has left the chat";

  const $ = (id) => document.getElementById(id);
  const ui = {
    room: $("room"),
    state: $("state"),
    announce: $("announce"),
    scroller: $("scroller"),
    log: $("log"),
    pending: $("pending"),
    jump: $("jump"),
    membersPanel: $("members-panel"),
    members: $("members"),
    memberCount: $("member-count"),
    nobody: $("nobody"),
    passForm: $("pass-form"),
    pass: $("pass"),
    passError: $("pass-error"),
    joinForm: $("join-form"),
    name: $("name"),
    join: $("join"),
    joinError: $("join-error"),
    sendForm: $("send-form"),
    me: $("me"),
    message: $("message"),
    send: $("send"),
    sendError: $("send-error"),
    leave: $("leave"),
    skip: $("skip"),
  };

  // sessionStorage may be refused (privacy settings): the page then works without it.
  const saved = {
    get(key) {
      try {
        return sessionStorage.getItem("tcpchat." + key);
      } catch {
        return null;
      }
    },
    set(key, value) {
      try {
        if (value === null || value === undefined) {
          sessionStorage.removeItem("tcpchat." + key);
        } else {
          sessionStorage.setItem("tcpchat." + key, value);
        }
      } catch {
        // Nothing to do: a reload will start afresh.
      }
    },
  };

  function loadPending() {
    try {
      const list = JSON.parse(saved.get("pending") || "[]");
      return Array.isArray(list)
        ? list.filter((p) => p && typeof p.id === "string" && typeof p.text === "string")
        : [];
    } catch {
      return [];
    }
  }

  /** A random prefix for this page's line ids, so no two tabs' ids meet. */
  function randomPrefix() {
    const bytes = new Uint8Array(6);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  const state = {
    /** The highest event number shown; nothing at or below it is shown again. */
    lastSeq: 0,
    /** Where to resume when a welcome came but no event was shown yet. */
    floor: 0,
    /** A welcome was seen: reconnects resume with since= instead of history=. */
    resumed: false,
    /** The chosen name, or null while only reading. */
    name: saved.get("name"),
    token: saved.get("token"),
    tokenName: saved.get("token-name"),
    /** The server's password, for a server that asks for one (kept for this tab). */
    password: saved.get("pass"),
    /** The server refused the password (or its absence): the password form shows. */
    needsPassword: false,
    /** Lines typed and not yet seen to land: {id, text, sentOn}. */
    pending: loadPending(),
    idPrefix: randomPrefix(),
    idCounter: 0,
    /** The welcomed connection whose events the page follows. */
    conn: null,
    /** A connection being opened (it replaces `conn` once welcomed). */
    attempt: null,
    serial: 0,
    retryDelay: RETRY_FIRST_MS,
    retryTimer: null,
    retryAt: 0,
    countdown: null,
    /** A final error, shown until something else happens. */
    failure: null,
    unread: 0,
    roomName: null,
  };

  // ---------------------------------------------------------------- the wire

  /** `@a=1;b=2 TEXT` -> {tags: {a: "1", b: "2"}, text: "TEXT"}, or null. */
  function parseTagged(line) {
    const space = line.indexOf(" ");
    if (!line.startsWith("@") || space < 0) {
      return null;
    }
    const tags = {};
    for (const part of line.slice(1, space).split(";")) {
      const eq = part.indexOf("=");
      if (eq > 0) {
        tags[part.slice(0, eq)] = part.slice(eq + 1);
      } else if (part) {
        tags[part] = "";
      }
    }
    return { tags, text: line.slice(space + 1) };
  }

  /** An event's text -> {kind, name, body}. */
  function parseEvent(text) {
    if (text.endsWith(JOINED)) {
      const name = text.slice(0, -JOINED.length);
      if (NAME.test(name)) {
        return { kind: "join", name, body: "joined" };
      }
    }
    if (text.endsWith(LEFT)) {
      const name = text.slice(0, -LEFT.length);
      if (NAME.test(name)) {
        return { kind: "leave", name, body: "left" };
      }
    }
    // A name holds no ':' or space, so the first ": " ends it.
    const colon = text.indexOf(": ");
    if (colon > 0 && NAME.test(text.slice(0, colon))) {
      return { kind: "message", name: text.slice(0, colon), body: text.slice(colon + 2) };
    }
    return { kind: "other", name: "", body: text };
  }

  function utf8Length(text) {
    return new TextEncoder().encode(text).length;
  }

  /** Why `name` cannot be a name, or null (the server has the last word). */
  function nameProblem(name) {
    if (name.length === 0) return "Please pick a name.";
    if ([...name].length > 32) return "A name may have at most 32 characters.";
    if (/\s/u.test(name)) return "A name may not contain spaces.";
    if (name.includes(":")) return "A name may not contain ':'.";
    if (name.startsWith("*")) return "A name may not start with '*'.";
    // Control and invisible formatting characters.
    if (/[\p{Cc}\p{Cf}]/u.test(name)) return "A name may not contain control characters.";
    return null;
  }

  // ---------------------------------------------------------------- connections

  class Conn {
    constructor(name) {
      this.serial = ++state.serial;
      this.role = name === null ? "viewer" : "chat";
      this.name = name;
      this.welcomeSeq = null;
      this.welcomedAt = 0;
      this.replayDone = false;
      /** Who is in the room as this connection tells it, once its list is complete. */
      this.members = null;
      this.incoming = null;
      this.error = null;
      this.bye = false;
      this.closedByUs = false;
      this.askedHistory = !state.resumed;
      this.since = state.resumed ? Math.max(state.lastSeq, state.floor) : null;
      let hello = this.role === "viewer" ? "viewer" : "chat:" + name;
      hello += " tags";
      hello += this.askedHistory ? " history=" + HISTORY : " since=" + this.since;
      if (this.role === "chat" && state.token && state.tokenName === name) {
        hello += " token=" + state.token;
      }
      if (state.password) hello += " pass=" + state.password;
      // `heartbeat`: a `*** ping` after 15 s of silence, which (unlike the WebSocket
      // ping the browser answers unseen) tells the page the server is still there.
      hello += " members heartbeat";
      const scheme = location.protocol === "https:" ? "wss://" : "ws://";
      this.ws = new WebSocket(scheme + location.host + "/ws");
      this.ws.onopen = () => this.ws.send(hello);
      this.heardAt = Date.now();
      this.ws.onmessage = (event) => {
        this.heardAt = Date.now();
        if (typeof event.data === "string" && !this.closedByUs) {
          onLine(this, event.data);
        }
      };
      // A server that vanished without a word (a laptop's sleep, a dead network)
      // sends nothing: after SILENCE_MS the connection counts as lost.
      // Closing such a socket may itself take long: it is let go of at once.
      this.watchdog = setInterval(() => {
        if (Date.now() - this.heardAt > SILENCE_MS) {
          this.ws.onclose = null;
          try {
            this.ws.close();
          } catch {
            // Already closing.
          }
          onClose(this, { code: 1006, reason: "", wasClean: false });
        }
      }, 5000);
      this.ws.onclose = (event) => onClose(this, event);
      this.timer = setTimeout(() => {
        if (this.welcomeSeq === null) {
          this.ws.close();
        }
      }, WELCOME_TIMEOUT_MS);
    }

    /** Ends this connection on purpose: nothing it still delivers is looked at. */
    drop() {
      this.closedByUs = true;
      clearTimeout(this.timer);
      clearInterval(this.watchdog);
      try {
        this.ws.close(1000);
      } catch {
        // Already closed.
      }
    }

    isReady() {
      return this === state.conn && this.replayDone && this.ws.readyState === WebSocket.OPEN;
    }
  }

  /** Opens the connection the page wants now: a chatter with the chosen name, or a viewer. */
  function connect() {
    clearRetry();
    if (state.attempt) {
      return;
    }
    try {
      state.attempt = new Conn(state.name);
    } catch (error) {
      state.attempt = null;
      scheduleRetry(null);
      return;
    }
    render();
  }

  function clearRetry() {
    if (state.retryTimer !== null) {
      clearTimeout(state.retryTimer);
      state.retryTimer = null;
    }
    if (state.countdown !== null) {
      clearInterval(state.countdown);
      state.countdown = null;
    }
  }

  function scheduleRetry(lost) {
    if (state.attempt || state.retryTimer !== null) {
      return;
    }
    if (lost && lost.welcomedAt && Date.now() - lost.welcomedAt > STABLE_MS) {
      state.retryDelay = RETRY_FIRST_MS;
    }
    const delay = Math.round(state.retryDelay * (0.5 + Math.random() * 0.5));
    state.retryDelay = Math.min(state.retryDelay * 2, RETRY_MAX_MS);
    state.retryAt = Date.now() + delay;
    state.retryTimer = setTimeout(() => {
      state.retryTimer = null;
      connect();
    }, delay);
    if (delay >= 1000) {
      state.countdown = setInterval(renderState, 250);
    }
    render();
  }

  function onLine(conn, line) {
    if (line.startsWith("*** ")) {
      onNotice(conn, line.slice(4));
      return;
    }
    const tagged = parseTagged(line);
    if (!tagged || !/^\d+$/.test(tagged.tags.seq || "")) {
      return;
    }
    const seq = Number(tagged.tags.seq);
    if (conn.welcomeSeq === null) {
      const welcome = WELCOME.exec(tagged.text);
      if (welcome) {
        onWelcome(conn, seq, welcome[1]);
      }
      return;
    }
    onEvent(conn, seq, tagged.tags, tagged.text);
  }

  function onWelcome(conn, seq, roomName) {
    clearTimeout(conn.timer);
    conn.welcomeSeq = seq;
    conn.welcomedAt = Date.now();
    if (conn.since !== null && seq < conn.since) {
      // The server's log starts lower than what was shown: it was started afresh.
      addNotice("The server's history was reset; numbering starts again.");
      state.lastSeq = seq;
      state.floor = seq;
    }
    if (conn.askedHistory && !state.resumed) {
      state.floor = Math.max(0, seq - HISTORY);
    }
    state.resumed = true;
    conn.replayDone = conn.since !== null ? conn.since >= seq : seq === 0;
    state.roomName = roomName;
    state.failure = null;
    if (state.attempt === conn) {
      state.attempt = null;
    }
    if (state.conn && state.conn !== conn) {
      state.conn.drop();
    }
    state.conn = conn;
    // A replay is announced as a whole once it is in, not line by line.
    ui.log.setAttribute("aria-busy", conn.replayDone ? "false" : "true");
    if (conn.role === "chat") {
      ui.joinError.textContent = "";
    }
    caughtUp(conn);
    render();
  }

  function onNotice(conn, notice) {
    if (notice.startsWith("members ")) {
      // `members N: a b c`, possibly over several lines: complete once N names came.
      const match = /^members (\d+):(.*)$/.exec(notice);
      if (!match) return;
      const total = Number(match[1]);
      if (!conn.incoming) {
        conn.incoming = { total, names: new Set(), count: 0 };
      }
      for (const name of match[2].split(" ")) {
        if (name) {
          conn.incoming.names.add(name);
          conn.incoming.count += 1;
        }
      }
      if (conn.incoming.count >= conn.incoming.total) {
        conn.members = conn.incoming.names;
        conn.incoming = null;
        if (conn === state.conn) renderMembers();
      }
    } else if (notice.startsWith("token: ")) {
      state.token = notice.slice(7);
      state.tokenName = conn.name;
      saved.set("token", state.token);
      saved.set("token-name", state.tokenName);
    } else if (notice.startsWith("error ")) {
      const match = /^error ([^:]+): (.*)$/.exec(notice);
      conn.error = match
        ? { code: match[1], text: match[2] }
        : { code: "unknown", text: notice.slice(6) };
    } else if (notice.startsWith("gap: ")) {
      if (conn === state.conn || conn === state.attempt) {
        addNotice("Some earlier messages are no longer kept (" + notice.slice(5) + ").");
      }
    } else if (notice.startsWith("bye")) {
      conn.bye = true;
    }
  }

  function onEvent(conn, seq, tags, text) {
    const event = parseEvent(text);
    if (conn.members) {
      if (event.kind === "join") conn.members.add(event.name);
      if (event.kind === "leave") conn.members.delete(event.name);
      if ((event.kind === "join" || event.kind === "leave") && conn === state.conn) {
        renderMembers();
      }
    }
    if (event.kind === "message" && tags.id && event.name === state.name) {
      landed(tags.id);
    }
    if (seq > state.lastSeq) {
      state.lastSeq = seq;
      showEvent(seq, tags, event);
    }
    if (!conn.replayDone && seq >= conn.welcomeSeq) {
      conn.replayDone = true;
      caughtUp(conn);
      render();
    }
  }

  /** The replay is in: the page is live, and lines not seen to land are sent again. */
  function caughtUp(conn) {
    if (!conn.replayDone || conn !== state.conn) {
      return;
    }
    ui.log.setAttribute("aria-busy", "false");
    flushPending();
  }

  function onClose(conn, event) {
    clearTimeout(conn.timer);
    clearInterval(conn.watchdog);
    if (conn.closedByUs) {
      return;
    }
    if (state.attempt === conn) {
      state.attempt = null;
    } else if (state.conn === conn) {
      state.conn = null;
    } else {
      return;
    }
    const error = conn.error;
    if (error && error.code === "message-too-long") {
      // "a message may have at most 4096 bytes" (or, in older words, "lines are
      // limited to 4096 bytes"): the limit includes the id in front of the text.
      const limit = /(\d+) bytes/.exec(error.text);
      if (limit) maxLineBytes = Number(limit[1]);
      dropOversize(conn);
    }
    if (error && (error.code === "bad-password" || error.code === "too-many-attempts")) {
      // Asked for again; the name, if any, is kept for when it is right.
      const hadOne = state.password !== null;
      state.password = null;
      saved.set("pass", null);
      state.needsPassword = true;
      ui.passError.textContent =
        hadOne || error.code === "too-many-attempts"
          ? describeError(error)
          : "This chat asks for a password.";
      state.failure = "A password is needed.";
      render();
      return;
    }
    if (error && !RETRY_CODES.has(error.code)) {
      if (conn.role === "chat") {
        // Refused as this name, or the name was taken over elsewhere: keep reading as a
        // viewer and let the reader choose again.
        giveUpName(describeError(error));
        if (!state.conn) connect();
      } else {
        state.failure = describeError(error);
      }
      render();
      return;
    }
    scheduleRetry(conn);
  }

  function describeError(error) {
    switch (error.code) {
      case "name-taken":
        return "That name is taken. Please pick another.";
      case "replaced":
        return "Your name was taken over by another window or tab.";
      default:
        return error.text.charAt(0).toUpperCase() + error.text.slice(1) + ".";
    }
  }

  // ---------------------------------------------------------------- posting

  function nextId() {
    state.idCounter += 1;
    return state.idPrefix + "-" + state.idCounter;
  }

  function savePending() {
    saved.set(
      "pending",
      state.pending.length
        ? JSON.stringify(state.pending.map((p) => ({ id: p.id, text: p.text })))
        : null,
    );
  }

  function wireLine(p) {
    return "@id=" + p.id + " " + p.text;
  }

  /** Sends every pending line not yet sent on the current connection, in order. */
  function flushPending() {
    const conn = state.conn;
    if (!conn || conn.role !== "chat" || !conn.isReady()) {
      renderPending();
      return;
    }
    for (const p of state.pending) {
      if (p.sentOn !== conn.serial) {
        conn.ws.send(wireLine(p));
        p.sentOn = conn.serial;
      }
    }
    renderPending();
  }

  function landed(id) {
    const before = state.pending.length;
    state.pending = state.pending.filter((p) => p.id !== id);
    if (state.pending.length !== before) {
      savePending();
      renderPending();
    }
  }

  /** After `message-too-long`: the lines over the limit are not sent again (or, if
   * the limit could not be read, the longest line sent on `conn`), so a retry cannot
   * meet the same refusal forever. */
  function dropOversize(conn) {
    let kept = state.pending.filter((p) => utf8Length(wireLine(p)) <= maxLineBytes);
    if (kept.length === state.pending.length) {
      const sent = state.pending.filter((p) => p.sentOn === conn.serial);
      const longest = sent.reduce(
        (a, b) => (a && utf8Length(wireLine(a)) >= utf8Length(wireLine(b)) ? a : b),
        null,
      );
      kept = state.pending.filter((p) => p !== longest);
    }
    if (kept.length !== state.pending.length) {
      const dropped = state.pending.filter((p) => !kept.includes(p));
      ui.sendError.textContent = "A message was too long for the server and was not sent.";
      // Back in the box, to be shortened.
      if (!ui.message.value && dropped.length === 1) ui.message.value = dropped[0].text;
      state.pending = kept;
      savePending();
      renderPending();
    }
  }

  function post(text) {
    const p = { id: nextId(), text, sentOn: null };
    const bytes = utf8Length(wireLine(p));
    if (bytes > maxLineBytes) {
      ui.sendError.textContent =
        "That message is too long (" + bytes + " bytes; the limit is " + maxLineBytes + ").";
      return false;
    }
    ui.sendError.textContent = "";
    state.pending.push(p);
    savePending();
    flushPending();
    return true;
  }

  // ---------------------------------------------------------------- names

  function chooseName(name) {
    state.name = name;
    saved.set("name", name);
    state.failure = null;
    state.retryDelay = RETRY_FIRST_MS;
    clearRetry();
    if (state.attempt) {
      state.attempt.drop();
      state.attempt = null;
    }
    connect();
  }

  /** Back to reading only; `why` is shown by the name field. */
  function giveUpName(why) {
    const name = state.name;
    state.name = null;
    saved.set("name", null);
    if (state.pending.length) {
      why += " " + state.pending.length + " unsent message(s) were dropped.";
      state.pending = [];
      savePending();
    }
    ui.joinError.textContent = why;
    if (why) ui.name.setAttribute("aria-invalid", "true");
    if (name !== null && !ui.name.value) ui.name.value = name;
    renderPending();
  }

  function leave() {
    giveUpName("");
    if (state.attempt) {
      state.attempt.drop();
      state.attempt = null;
    }
    if (state.conn) {
      state.conn.drop();
      state.conn = null;
    }
    state.retryDelay = RETRY_FIRST_MS;
    connect();
    ui.name.focus();
  }

  // ---------------------------------------------------------------- drawing

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  /** One of eight colours, the same for a name everywhere. */
  function colourOf(name) {
    let hash = 0;
    for (const ch of name) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
    return "c" + (hash % 8);
  }

  function timeOf(tag) {
    const node = el("time", "time");
    const date = new Date(tag || "");
    if (!tag || Number.isNaN(date.getTime())) {
      return node;
    }
    const now = new Date();
    const sameDay = date.toDateString() === now.toDateString();
    node.dateTime = date.toISOString();
    node.title = date.toLocaleString();
    node.textContent = sameDay
      ? date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
      : date.toLocaleString([], {
          month: "short",
          day: "numeric",
          hour: "2-digit",
          minute: "2-digit",
        });
    return node;
  }

  function nearBottom() {
    const s = ui.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight < 48;
  }

  let stickToBottom = true;
  let scrollQueued = false;
  function afterAdding() {
    if (!stickToBottom) {
      ui.jump.hidden = false;
      return;
    }
    if (!scrollQueued) {
      scrollQueued = true;
      requestAnimationFrame(() => {
        scrollQueued = false;
        ui.scroller.scrollTop = ui.scroller.scrollHeight;
      });
    }
  }

  function trimLog() {
    while (ui.log.childElementCount > MAX_SHOWN) {
      ui.log.firstElementChild.remove();
    }
  }

  function showEvent(seq, tags, event) {
    const li = el("li", "event " + event.kind);
    li.dataset.seq = String(seq);
    li.dataset.kind = event.kind;
    li.append(timeOf(tags.time));
    if (event.name) {
      li.append(el("span", "who " + colourOf(event.name), event.name));
    }
    li.append(el("span", "body", event.body));
    if (event.name && event.name === state.name) {
      li.classList.add("mine");
    }
    ui.log.append(li);
    trimLog();
    afterAdding();
    if (document.hidden && event.kind === "message") {
      state.unread += 1;
      renderTitle();
    }
  }

  function addNotice(text) {
    ui.log.append(el("li", "notice", text));
    trimLog();
    afterAdding();
  }

  function renderPending() {
    const ready = state.conn && state.conn.role === "chat" && state.conn.isReady();
    const items = state.pending.map((p) => {
      const li = el("li", "event message mine waiting");
      li.dataset.id = p.id;
      li.append(el("span", "time", ready ? "sending…" : "waiting"));
      if (state.name) li.append(el("span", "who " + colourOf(state.name), state.name));
      li.append(el("span", "body", p.text));
      return li;
    });
    ui.pending.replaceChildren(...items);
    if (items.length) afterAdding();
  }

  function renderMembers() {
    const conn = state.conn;
    if (!conn || !conn.members) return;
    const names = [...conn.members].sort((a, b) => a.localeCompare(b));
    ui.members.replaceChildren(
      ...names.map((name) => {
        const li = el("li", "member");
        li.dataset.name = name;
        li.append(el("span", "dot " + colourOf(name)));
        li.append(el("span", "who " + colourOf(name), name));
        if (name === state.name) li.append(el("span", "you", " (you)"));
        return li;
      }),
    );
    ui.memberCount.textContent = String(names.length);
    ui.nobody.hidden = names.length > 0;
  }

  function renderStale() {
    ui.members.classList.toggle("stale", !state.conn);
  }

  function renderState() {
    let kind;
    let text;
    const conn = state.conn;
    if (state.failure) {
      kind = "error";
      text = state.failure;
    } else if (conn && conn.replayDone) {
      kind = "live";
      if (conn.role === "chat") {
        text = "Live";
      } else if (state.name !== null) {
        text = "Live, joining…";
      } else {
        text = "Live, reading";
      }
    } else if (conn) {
      kind = "connecting";
      text = "Catching up…";
    } else if (state.retryTimer !== null) {
      kind = "reconnecting";
      const seconds = Math.max(1, Math.ceil((state.retryAt - Date.now()) / 1000));
      text = "Connection lost, reconnecting in " + seconds + " s";
    } else if (state.resumed) {
      kind = "reconnecting";
      text = "Reconnecting…";
    } else {
      kind = "connecting";
      text = "Connecting…";
    }
    if (ui.state.dataset.state !== kind) {
      ui.state.dataset.state = kind;
      // Said once per change of state, not at every tick of the countdown.
      ui.announce.textContent = {
        live: "Connected.",
        connecting: "Connecting.",
        reconnecting: "Connection lost; reconnecting.",
        error: text,
      }[kind];
    }
    if (ui.state.textContent !== text) ui.state.textContent = text;
  }

  function renderTitle() {
    const base = state.roomName || "tcpchat";
    document.title = (state.unread ? "(" + state.unread + ") " : "") + base;
  }

  /** Which form shows, and everything that follows from the connection state. */
  function render() {
    renderState();
    renderTitle();
    if (state.roomName && ui.room.textContent !== state.roomName) {
      ui.room.textContent = state.roomName;
    }
    const passWasHidden = ui.passForm.hidden;
    ui.passForm.hidden = !state.needsPassword;
    if (state.needsPassword) {
      ui.sendForm.hidden = true;
      ui.joinForm.hidden = true;
      if (passWasHidden) ui.pass.focus();
      renderStale();
      return;
    }
    const chatting = state.name !== null;
    const joined = chatting && state.conn && state.conn.role === "chat";
    const wasHidden = ui.sendForm.hidden;
    ui.sendForm.hidden = !chatting;
    ui.joinForm.hidden = chatting;
    ui.join.disabled = chatting;
    ui.me.textContent = state.name || "";
    ui.skip.href = chatting ? "#message" : "#name";
    ui.leave.disabled = !chatting;
    if (chatting && wasHidden) {
      // The reader just joined (or the page reopened as them): typing goes on here.
      ui.message.focus();
    }
    if (!chatting && !wasHidden) {
      ui.name.focus();
    }
    ui.sendForm.dataset.joined = joined ? "yes" : "no";
    renderPending();
    renderMembers();
    renderStale();
  }

  // ---------------------------------------------------------------- the reader's input

  ui.joinForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const name = ui.name.value.trim();
    const problem = nameProblem(name);
    if (problem) {
      ui.joinError.textContent = problem;
      ui.name.setAttribute("aria-invalid", "true");
      ui.name.focus();
      return;
    }
    ui.name.removeAttribute("aria-invalid");
    ui.joinError.textContent = "";
    chooseName(name);
  });

  ui.passForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const password = ui.pass.value;
    if (!password || /\s/u.test(password)) {
      ui.passError.textContent = "A password is one word, without spaces.";
      ui.pass.focus();
      return;
    }
    ui.pass.value = "";
    ui.passError.textContent = "";
    state.password = password;
    saved.set("pass", password);
    state.needsPassword = false;
    state.failure = null;
    state.retryDelay = RETRY_FIRST_MS;
    clearRetry();
    render();
    if (!state.conn && !state.attempt) connect();
  });

  ui.sendForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = ui.message.value;
    if (!text.trim() || state.name === null) return;
    if (post(text)) ui.message.value = "";
    ui.message.focus();
  });

  ui.leave.addEventListener("click", leave);

  ui.scroller.addEventListener("scroll", () => {
    stickToBottom = nearBottom();
    if (stickToBottom) ui.jump.hidden = true;
  });

  ui.jump.addEventListener("click", () => {
    stickToBottom = true;
    ui.jump.hidden = true;
    ui.scroller.scrollTop = ui.scroller.scrollHeight;
    ui.scroller.focus();
  });

  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && state.unread) {
      state.unread = 0;
      renderTitle();
    }
  });

  // Back online: no reason to wait out the backoff.
  window.addEventListener("online", () => {
    if (state.retryTimer !== null) {
      state.retryDelay = RETRY_FIRST_MS;
      connect();
    }
  });

  // The member list folds away on a narrow screen, and opens on a wide one.
  const narrow = window.matchMedia("(max-width: 40rem)");
  const fitMembers = () => {
    ui.membersPanel.open = !narrow.matches;
  };
  narrow.addEventListener("change", fitMembers);
  fitMembers();

  render();
  connect();
})();
