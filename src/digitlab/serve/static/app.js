// The drawing page: Pointer Events on a canvas, live predictions from /v1/predict (throttled),
// digit strings from /v1/read. No dependencies; every API error becomes a message, never a throw.
"use strict";

(() => {
  const PEN_WIDTH = 20;          // px at 280 px high: about 2 px after the reduction to 28x28, like MNIST
  const THROTTLE_MS = 150;       // at most one request per this while the pen moves
  const SINGLE_WIDTH = 280;
  const STRING_WIDTH = 840;      // digit-string mode: room for a few digits side by side
  const EMPTY_MESSAGE = "draw a digit";
  // A rejected answer is shown as not read, with the API's own reason; never as a digit and a percentage.
  const NOT_READ = "not read";
  const DIGITS = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];

  const pad = document.getElementById("pad");
  const ctx = pad.getContext("2d");
  const preparedCanvas = document.getElementById("prepared");
  const preparedCtx = preparedCanvas.getContext("2d");
  const labelEl = document.getElementById("label");
  const confidenceEl = document.getElementById("confidence");
  const whyEl = document.getElementById("why");
  const reasonEl = document.getElementById("reason");
  const guessEl = document.getElementById("guess");
  const barsEl = document.getElementById("bars");
  const digitsEl = document.getElementById("digits");
  const seenSection = document.getElementById("seen-section");
  const statusEl = document.getElementById("status");
  const clearButton = document.getElementById("clear");
  const modeButton = document.getElementById("mode");
  const uploadInput = document.getElementById("upload");
  const modelInfo = document.getElementById("model-info");

  const state = {
    stringMode: false,
    drawing: false,
    pointerId: null,
    last: null,          // last pen position in canvas pixels
    hasInk: false,       // nothing drawn: never ask the model (an empty canvas is not a guess)
    upload: null,        // base64 of an uploaded file, sent as it is instead of the canvas
    generation: 0,       // bumped by Clear and mode changes: answers to older requests are dropped
    inFlight: false,
    pending: false,      // a newer drawing is waiting for the request in flight
    lastSent: 0,
    timer: null,
  };

  // ---- bars -------------------------------------------------------------------------------
  const bars = DIGITS.map((d) => {
    const li = document.createElement("li");
    const name = document.createElement("span");
    name.className = "d";
    name.textContent = d;
    const track = document.createElement("span");
    track.className = "track";
    track.setAttribute("aria-hidden", "true");
    const fill = document.createElement("span");
    fill.className = "fill";
    track.appendChild(fill);
    const p = document.createElement("span");
    p.className = "p";
    li.append(name, track, p);
    li.dataset.digit = d;
    barsEl.appendChild(li);
    return { li, fill, p };
  });

  function showBars(probabilities) {
    let best = -1;
    let bestP = -1;
    DIGITS.forEach((d, i) => {
      const p = probabilities && Number.isFinite(probabilities[d]) ? probabilities[d] : 0;
      if (p > bestP) { best = i; bestP = p; }
      bars[i].fill.style.width = `${(100 * p).toFixed(1)}%`;
      bars[i].p.textContent = probabilities ? `${Math.round(100 * p)}%` : "";
    });
    bars.forEach((b, i) => b.li.classList.toggle("top", Boolean(probabilities) && i === best));
  }

  // ---- messages ---------------------------------------------------------------------------
  function setStatus(text, isError = false) {
    statusEl.textContent = text;
    statusEl.classList.toggle("error", isError);
  }

  function showMessage(text) {
    labelEl.textContent = text;
    labelEl.className = "empty";
    confidenceEl.textContent = "";
    showWhy(null);
    showBars(null);
    digitsEl.replaceChildren();
  }

  function showWhy(reason, guess = null) {
    // reason: the API's words, shown as they are; guess: the model's best class, secondary and without a
    // percentage (a rejected answer's confidence is exactly what was not trusted).
    whyEl.hidden = !reason;
    reasonEl.textContent = reason || "";
    guessEl.textContent = guess !== null && guess !== undefined ? `best guess ${guess}` : "";
  }

  function showNotRead(reason, guess = null) {
    showMessage(NOT_READ);
    labelEl.className = "not-read";
    showWhy(reason, guess);
  }

  function showEmpty() {
    showMessage(EMPTY_MESSAGE);
    clearPrepared();
  }

  function percent(p) {
    return Number.isFinite(p) ? `${Math.round(100 * p)}%` : "";
  }

  // ---- the canvas -------------------------------------------------------------------------
  function resetCanvas() {
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, pad.width, pad.height);
    ctx.strokeStyle = "#000";
    ctx.fillStyle = "#000";
    ctx.lineWidth = PEN_WIDTH;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
  }

  function clearPrepared() {
    preparedCtx.fillStyle = "#000";
    preparedCtx.fillRect(0, 0, preparedCanvas.width, preparedCanvas.height);
  }

  function clearAll() {
    state.generation += 1;
    state.hasInk = false;
    state.upload = null;
    state.pending = false;
    if (state.timer !== null) { clearTimeout(state.timer); state.timer = null; }
    uploadInput.value = "";
    if (!state.inFlight) setBusy(false);
    resetCanvas();
    showEmpty();
    setStatus("");
  }

  function canvasPoint(event) {
    // The canvas may be shown smaller than its pixel size (narrow screens): map CSS px to canvas px.
    const rect = pad.getBoundingClientRect();
    return {
      x: (event.clientX - rect.left) * (pad.width / rect.width),
      y: (event.clientY - rect.top) * (pad.height / rect.height),
    };
  }

  function dot(p) {
    ctx.beginPath();
    ctx.arc(p.x, p.y, PEN_WIDTH / 2, 0, 2 * Math.PI);
    ctx.fill();
  }

  function segment(a, b) {
    ctx.beginPath();
    ctx.moveTo(a.x, a.y);
    ctx.lineTo(b.x, b.y);
    ctx.stroke();
  }

  pad.addEventListener("pointerdown", (event) => {
    if (event.pointerType === "mouse" && event.button !== 0) return;
    event.preventDefault();
    if (state.upload !== null) { clearAll(); }  // drawing replaces an uploaded image
    pad.setPointerCapture(event.pointerId);
    state.drawing = true;
    state.pointerId = event.pointerId;
    state.last = canvasPoint(event);
    dot(state.last);
    state.hasInk = true;
    requestPrediction();
  });

  pad.addEventListener("pointermove", (event) => {
    if (!state.drawing || event.pointerId !== state.pointerId) return;
    const events = typeof event.getCoalescedEvents === "function" ? event.getCoalescedEvents() : [];
    for (const e of events.length ? events : [event]) {
      const p = canvasPoint(e);
      segment(state.last, p);
      state.last = p;
    }
    requestPrediction();
  });

  function endStroke(event) {
    if (!state.drawing || event.pointerId !== state.pointerId) return;
    state.drawing = false;
    state.pointerId = null;
    requestPrediction(true);
  }
  pad.addEventListener("pointerup", endStroke);
  pad.addEventListener("pointercancel", endStroke);

  // ---- talking to the API -----------------------------------------------------------------
  async function postJSON(url, body) {
    // Returns {ok, data} or {ok: false, error}: a failed request is a message, not an exception.
    let response;
    try {
      response = await fetch(url, {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify(body),
      });
    } catch (err) {
      return { ok: false, error: `the server cannot be reached (${err && err.message ? err.message : err})` };
    }
    let data = null;
    try { data = await response.json(); } catch (_) { data = null; }
    if (!response.ok) return { ok: false, error: errorText(response, data) };
    if (data === null || typeof data !== "object") return { ok: false, error: "the server sent no JSON" };
    return { ok: true, data };
  }

  function errorText(response, data) {
    const detail = data && (data.detail ?? data.error ?? data.message);
    let text = "";
    if (typeof detail === "string") text = detail;
    else if (Array.isArray(detail)) text = detail.map((d) => (d && d.msg) || JSON.stringify(d)).join("; ");
    else if (detail) text = JSON.stringify(detail);
    return `${response.status} ${response.statusText || ""}`.trim() + (text ? `: ${text}` : "");
  }

  function currentImage() {
    if (state.upload !== null) return state.upload;
    const url = pad.toDataURL("image/png");
    return url.slice(url.indexOf(",") + 1);
  }

  function setBusy(busy) {
    // For tests and assistive styling: "idle" once no request is in flight or waiting.
    document.body.dataset.state = busy ? "busy" : "idle";
  }

  function requestPrediction(now = false) {
    if (!state.hasInk) return;
    state.pending = true;
    setBusy(true);
    if (state.inFlight) return;  // sent again when the answer comes
    const wait = now ? 0 : Math.max(0, THROTTLE_MS - (Date.now() - state.lastSent));
    if (wait === 0) {
      if (state.timer !== null) { clearTimeout(state.timer); state.timer = null; }
      send();
    } else if (state.timer === null) {
      state.timer = setTimeout(() => { state.timer = null; send(); }, wait);
    }
  }

  async function send() {
    if (!state.pending || !state.hasInk || state.inFlight) {
      if (!state.inFlight) setBusy(false);
      return;
    }
    state.pending = false;
    state.inFlight = true;
    state.lastSent = Date.now();
    const generation = state.generation;
    const stringMode = state.stringMode;
    const image = currentImage();
    const result = stringMode
      ? await postJSON("v1/read", { image })
      : await postJSON("v1/predict", { image, top_k: 3, return_prepared: "list" });
    state.inFlight = false;
    if (generation === state.generation) {
      if (!result.ok) setStatus(`Error: ${result.error}`, true);
      else if (stringMode) showReading(result.data);
      else showPrediction(result.data);
    }
    if (state.pending) requestPrediction(!state.drawing);
    else if (state.timer === null) setBusy(false);
  }

  // ---- showing answers --------------------------------------------------------------------
  function showPrediction(data) {
    drawPrepared(data.prepared);
    const reason = data.reason || "no reason given";
    if (data.found === false || data.label === null || data.label === undefined) {
      // no ink the preparation calls a digit: a stray dot on the canvas is not worth a "not read"
      if (state.upload !== null) showNotRead(reason);
      else { showMessage(EMPTY_MESSAGE); showWhy(reason); }
      setStatus(`Not read: ${reason}.`);
      return;
    }
    if (data.rejected) {
      showNotRead(reason, data.label);
      setStatus(`Not read: ${reason}. Best guess ${data.label}, not trusted.`);
      return;
    }
    labelEl.className = "";
    labelEl.textContent = String(data.label);
    confidenceEl.textContent = percent(data.confidence);
    showWhy(null);
    showBars(data.probabilities);
    setStatus(`Read ${data.label} with ${percent(data.confidence)} confidence.`);
  }

  function showReading(data) {
    if (data.found === false || !data.text) {
      if (state.upload !== null) showNotRead("no digits found");
      else showMessage(EMPTY_MESSAGE);
      setStatus("No digits found.");
      return;
    }
    const digits = Array.isArray(data.digits) ? data.digits : [];
    if (data.rejected) {
      // the string model is unsure of the whole string: not read, with its best guess, never a confidence
      digitsEl.replaceChildren();
      showNotRead(data.reason || "not sure of this string", data.text);
      setStatus(`Not read: ${data.reason || "not sure of this string"}. Best guess "${data.text}", not trusted.`);
      return;
    }
    const nRejected = digits.filter((d) => d.rejected).length;
    // the string model also reads separators (. , - /): they are characters, not digits
    const noun = data.reader === "sequence" ? "character" : "digit";
    const plural = (n) => `${n} ${noun}${n === 1 ? "" : "s"}`;
    labelEl.className = "";
    labelEl.textContent = String(data.text);
    // A confidence that includes digits not read would vouch for them: it is shown only for a whole read. The
    // string's own confidence (the product of its characters', what the reader rejects on), not their mean.
    confidenceEl.textContent = digits.length && !nRejected && Number.isFinite(data.confidence)
      ? percent(data.confidence) : "";
    showWhy(nRejected ? `? = not read (${nRejected} of ${plural(digits.length)})` : null);
    digitsEl.replaceChildren(...digits.map((d) => {
      const li = document.createElement("li");
      if (d.rejected) {
        li.classList.add("rejected");
        const guess = document.createElement("span");
        guess.className = "guess";
        guess.textContent = `best guess ${d.label}`;
        li.append("? not read ", guess);
      } else {
        li.textContent = `${d.label} ${percent(d.confidence)}`;
      }
      return li;
    }));
    setStatus(nRejected
      ? `Read "${data.text}": ${nRejected} of ${plural(digits.length)} not read (shown as ?).`
      : `Read "${data.text}" (${plural(digits.length)}).`);
  }

  function drawPrepared(rows) {
    // rows: 28 lists of 28 ints 0-255, white ink on black, exactly what the model reads.
    clearPrepared();
    if (!Array.isArray(rows) || rows.length === 0 || !Array.isArray(rows[0])) return;
    const h = rows.length;
    const w = rows[0].length;
    if (preparedCanvas.width !== w || preparedCanvas.height !== h) {
      preparedCanvas.width = w;
      preparedCanvas.height = h;
    }
    const img = preparedCtx.createImageData(w, h);
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const v = Math.max(0, Math.min(255, Number(rows[y][x]) || 0));
        const i = 4 * (y * w + x);
        img.data[i] = v; img.data[i + 1] = v; img.data[i + 2] = v; img.data[i + 3] = 255;
      }
    }
    preparedCtx.putImageData(img, 0, 0);
  }

  // ---- controls ---------------------------------------------------------------------------
  clearButton.addEventListener("click", () => { clearAll(); setStatus("Cleared."); });

  modeButton.addEventListener("click", () => {
    state.stringMode = !state.stringMode;
    modeButton.setAttribute("aria-pressed", String(state.stringMode));
    pad.width = state.stringMode ? STRING_WIDTH : SINGLE_WIDTH;
    pad.setAttribute("aria-label", state.stringMode
      ? "Drawing area: write a few digits side by side"
      : "Drawing area: draw a digit with the mouse, a pen or a finger");
    barsEl.hidden = state.stringMode;
    digitsEl.hidden = !state.stringMode;
    seenSection.hidden = state.stringMode;
    clearAll();
    setStatus(state.stringMode ? "Digit-string mode: write several digits side by side." : "Single-digit mode.");
  });

  uploadInput.addEventListener("change", () => {
    const file = uploadInput.files && uploadInput.files[0];
    if (!file) return;
    const reader = new FileReader();
    reader.onerror = () => setStatus(`Error: cannot read ${file.name}.`, true);
    reader.onload = () => {
      const url = String(reader.result);
      clearAll();
      state.upload = url.slice(url.indexOf(",") + 1);
      state.hasInk = true;
      showUpload(url, file.name);
      requestPrediction(true);
    };
    reader.readAsDataURL(file);
  });

  function showUpload(url, name) {
    // The uploaded image, fitted into the canvas for show; the file itself is what is sent.
    const img = new Image();
    img.onload = () => {
      const scale = Math.min(pad.width / img.width, pad.height / img.height);
      const w = img.width * scale;
      const h = img.height * scale;
      ctx.drawImage(img, (pad.width - w) / 2, (pad.height - h) / 2, w, h);
    };
    img.onerror = () => setStatus(`${name}: the browser cannot show it; the server still reads it.`);
    img.src = url;
    setStatus(`Reading ${name}…`);
  }

  async function loadModelInfo() {
    let data = null;
    try {
      const response = await fetch("v1/model", { headers: { Accept: "application/json" } });
      if (response.ok) data = await response.json();
    } catch (_) {
      data = null;
    }
    if (data && data.name) {
      const unsure = Number.isFinite(data.threshold) ? `is under ${percent(data.threshold)} sure of it` : "";
      const odd = Number.isFinite(data.detector_threshold) ? "finds it unlike a digit" : "";
      const when = [unsure, odd].filter(Boolean).join(" or ");
      const rule = when ? ` A drawing is not read when the model ${when}.` : "";
      modelInfo.textContent = `Model ${data.name}.${rule} Draw a digit with the mouse, a pen or a finger.`;
    }
  }

  resetCanvas();
  showEmpty();
  setBusy(false);
  loadModelInfo();
})();
