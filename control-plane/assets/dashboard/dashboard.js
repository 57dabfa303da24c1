// The dashboard's one script: it changes things through the public API with the session cookie
// and the page's CSRF token, and shows the API's own error messages. No build step, no library.
"use strict";

const main = document.querySelector("main");
const csrf = main && main.dataset.csrf;
const $ = (selector, root = document) => root.querySelector(selector);
const $$ = (selector, root = document) => [...root.querySelectorAll(selector)];

/** Calls the API; resolves to {ok, status, body} where body is the JSON (or text) answer. */
async function api(method, url, body) {
  const headers = { "x-csrf-token": csrf };
  if (body !== undefined && !(body instanceof FormData)) {
    headers["content-type"] = "application/json";
    body = JSON.stringify(body);
  }
  const res = await fetch(url, { method, headers, body, credentials: "same-origin" });
  const text = await res.text();
  let parsed = text;
  try { parsed = JSON.parse(text); } catch { /* not JSON: a proxy's or the body limit's answer */ }
  return { ok: res.ok, status: res.status, body: parsed };
}

/** The API's error message (its envelope), or what else came back. */
function errorText(res) {
  const e = res.body && res.body.error;
  if (e) return `${e.message} (${e.type})`;
  return `HTTP ${res.status}: ${typeof res.body === "string" && res.body ? res.body : "no details"}`;
}

function showError(el, message) {
  el.textContent = message || "";
  el.hidden = !message;
}

function localTimes(root = document) {
  for (const t of $$("time[data-ms]", root)) {
    const d = new Date(Number(t.dataset.ms));
    t.dateTime = d.toISOString();
    t.textContent = d.toLocaleString();
  }
}

for (const form of $$("form.confirm")) {
  form.addEventListener("submit", (e) => {
    if (!confirm(form.dataset.confirm)) e.preventDefault();
  });
}

// ---- Voice library -------------------------------------------------------------------------

/** A voice upload's form data, as the API reads it. */
function voiceForm(form, file, fileName) {
  const data = new FormData();
  data.append("file", file, fileName);
  data.append("speaker_name", form.elements.speaker_name.value);
  data.append("transcript", form.elements.transcript.value);
  data.append("is_default", form.elements.is_default.checked ? "true" : "false");
  return data;
}

async function uploadVoice(form, file, fileName, errorEl) {
  showError(errorEl, "");
  const button = $("button[type=submit]", form);
  button.disabled = true;
  const res = await api("POST", "/v1/voices", voiceForm(form, file, fileName));
  button.disabled = false;
  if (res.ok) location.reload();
  else showError(errorEl, errorText(res));
}

const upload = $("#upload");
if (upload) {
  upload.addEventListener("submit", (e) => {
    e.preventDefault();
    const file = upload.elements.file.files[0];
    if (file) uploadVoice(upload, file, file.name, $("#upload-error"));
  });
}

for (const form of $$("form.edit-voice")) {
  const errorEl = $(".error", form);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const transcript = form.elements.transcript.value;
    const res = await api("PATCH", `/v1/voices/${form.dataset.id}`, {
      speaker_name: form.elements.speaker_name.value,
      transcript: transcript.trim() ? transcript : null,
      is_default: form.elements.is_default.checked,
    });
    if (res.ok) location.reload();
    else showError(errorEl, errorText(res));
  });
  $(".delete", form).addEventListener("click", async (e) => {
    if (!confirm(`Delete the sample "${e.target.dataset.name}"? This cannot be undone.`)) return;
    const res = await api("DELETE", `/v1/voices/${form.dataset.id}`);
    if (res.ok) location.reload();
    else showError(errorEl, errorText(res));
  });
}

const record = $("#record");
if (record) {
  const maxSeconds = Number(record.dataset.maxSeconds);
  const start = $("#record-start"), stop = $("#record-stop"), save = $("#record-save");
  const level = $("#record-level"), time = $("#record-time"), playback = $("#record-playback");
  const errorEl = $("#record-error");
  let recorder, blob, ticker;

  start.addEventListener("click", async () => {
    showError(errorEl, "");
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    } catch (err) {
      showError(errorEl, `The microphone is not available: ${err.message}`);
      return;
    }
    const chunks = [];
    recorder = new MediaRecorder(stream, { mimeType: "audio/webm;codecs=opus" });
    recorder.ondataavailable = (e) => chunks.push(e.data);
    recorder.onstop = () => {
      clearInterval(ticker);
      stream.getTracks().forEach((t) => t.stop());
      audio.close();
      level.value = 0;
      blob = new Blob(chunks, { type: "audio/webm" });
      playback.src = URL.createObjectURL(blob);
      playback.hidden = false;
      save.disabled = false;
      start.disabled = false;
      stop.disabled = true;
    };
    const audio = new AudioContext();
    const analyser = audio.createAnalyser();
    audio.createMediaStreamSource(stream).connect(analyser);
    const samples = new Float32Array(analyser.fftSize);
    const began = performance.now();
    ticker = setInterval(() => {
      analyser.getFloatTimeDomainData(samples);
      const rms = Math.sqrt(samples.reduce((s, x) => s + x * x, 0) / samples.length);
      level.value = Math.min(1, rms * 3);
      const elapsed = (performance.now() - began) / 1000;
      time.textContent = `${elapsed.toFixed(1)} s / ${maxSeconds} s`;
      // Stop a little before the limit: the encoded clip runs a few frames past the click.
      if (elapsed >= maxSeconds - 0.25 && recorder.state === "recording") recorder.stop();
    }, 100);
    recorder.start();
    start.disabled = true;
    stop.disabled = false;
    save.disabled = true;
    stop.focus();
  });
  stop.addEventListener("click", () => recorder && recorder.state === "recording" && recorder.stop());
  record.addEventListener("submit", (e) => {
    e.preventDefault();
    if (blob) uploadVoice(record, blob, "recording.webm", errorEl);
  });
}

// ---- Voice playground ----------------------------------------------------------------------

/** The spec's script rules, as the API checks them (proto::script); the first error, or null. */
function scriptError(input) {
  if (!input.trim()) return { line: 1, message: "the script is empty" };
  const lineOf = (i) => input.slice(0, i).split("\n").length;
  const tags = [...input.matchAll(/\[S(\d+)\]/g)];
  if (!tags.length) return null;
  if (input.slice(0, tags[0].index).trim()) {
    const line = lineOf(input.length - input.trimStart().length);
    return { line, message: `line ${line}: text before the first speaker tag; a tagged script must open with [S1]` };
  }
  for (let i = 0; i < tags.length; i++) {
    const tag = tags[i], line = lineOf(tag.index), n = tag[1];
    if (n === "2" && i === 0) return { line, message: `line ${line}: the script opens with [S2]; the first speaker must be [S1]` };
    if (n !== "1" && n !== "2") return { line, message: `line ${line}: speaker tag [S${n}] is not supported; use [S1] or [S2]` };
    const end = i + 1 < tags.length ? tags[i + 1].index : input.length;
    if (!input.slice(tag.index + tag[0].length, end).trim()) return { line, message: `line ${line}: [S${n}] has no text` };
  }
  return null;
}

const playground = $("#playground");
if (playground) {
  const f = playground.elements;
  const script = $("#script"), scriptErr = $("#script-error");
  const params = ["cfg_scale", "temperature", "top_p", "cfg_filter_top_k", "speed_factor", "max_new_tokens"];
  let lastSeed = null;

  const lint = () => {
    const err = scriptError(script.value);
    const tooLong = script.value.length > Number(playground.dataset.maxChars);
    const message = err
      ? `${err.message}: “${script.value.split("\n")[err.line - 1].trim()}”`
      : tooLong ? `the script has ${script.value.length} characters; the limit is ${playground.dataset.maxChars}` : "";
    showError(scriptErr, message);
    script.setAttribute("aria-invalid", message ? "true" : "false");
    return !message;
  };
  script.addEventListener("input", lint);

  /** The request body exactly as sent. */
  const body = () => {
    const b = { input: script.value };
    const speakers = {};
    for (const tag of ["S1", "S2"]) if (f[tag].value) speakers[tag] = Number(f[tag].value);
    if (Object.keys(speakers).length) b.speakers = speakers;
    for (const p of params) b[p] = Number(f[p].value);
    if (f.seed_mode.value === "fixed") b.seed = Number(f.seed.value);
    b.visibility = f.visibility.value;
    if (f.collection.value.trim()) b.collection = f.collection.value.trim();
    return b;
  };

  $("#copy-curl").addEventListener("click", () => {
    const json = JSON.stringify(body(), null, 2).replaceAll("'", "'\\''");
    const curl = `curl ${location.origin}/v1/voice/generations \\\n  -H "Authorization: Bearer $DIA_API_KEY" \\\n` +
      `  -H "Content-Type: application/json" \\\n  -d '${json}' \\\n  --output dialogue.wav`;
    const pre = $("#curl");
    pre.textContent = curl;
    pre.hidden = false;
    if (navigator.clipboard) navigator.clipboard.writeText(curl).catch(() => {});
  });

  const result = $("#result"), status = $("#status"), progress = $("#progress");
  const genError = $("#generate-error"), output = $("#output"), audioEl = $("#result-audio");

  playground.addEventListener("submit", async (e) => {
    e.preventDefault();
    if (!lint()) { script.focus(); return; }
    const request = body();
    result.hidden = false;
    output.hidden = true;
    showError(genError, "");
    progress.value = 0;
    status.textContent = "Sending…";
    $("#generate").disabled = true;
    const res = await api("POST", "/playground/generations", request);
    if (!res.ok) {
      $("#generate").disabled = false;
      status.textContent = "Not accepted.";
      showError(genError, errorText(res));
      return;
    }
    lastSeed = res.body.seed;
    follow(res.body.id, request.max_new_tokens);
  });

  /** Polls the request in the history until it ends. */
  async function follow(id, maxTokens) {
    // Dia's codec makes 44100 / 512 frames a second: the most audio the request can give.
    const maxSeconds = (maxTokens * 512) / 44100;
    for (;;) {
      const res = await api("GET", `/v1/history/${id}`);
      if (!res.ok) { showError(genError, errorText(res)); break; }
      const r = res.body;
      if (r.status === "queued") {
        status.textContent = `Queued: position ${r.queue_position ?? "?"}.`;
      } else if (r.status === "running") {
        const done = r.generated_seconds || 0;
        progress.value = Math.min(1, done / maxSeconds);
        status.textContent = `Generating on ${r.node_id}: ${done.toFixed(1)} s of audio so far.`;
      } else if (r.status === "succeeded") {
        progress.value = 1;
        status.textContent = `Done: ${r.audio_seconds.toFixed(2)} s of audio in ${r.inference_seconds.toFixed(2)} s on ${r.node_id}, seed ${r.seed}.`;
        audioEl.dataset.audioSeconds = r.audio_seconds;
        audioEl.src = r.audio_url;
        const link = $("#download");
        link.href = r.audio_url;
        link.download = `dia-${r.id}.wav`;
        output.hidden = false;
        waveform(r.audio_url);
        break;
      } else {
        status.textContent = "Failed.";
        showError(genError, `${r.error.message} (${r.error.type})`);
        break;
      }
      await new Promise((ok) => setTimeout(ok, 250));
    }
    $("#generate").disabled = false;
  }

  async function waveform(url) {
    const canvas = $("#waveform"), g = canvas.getContext("2d");
    const buffer = await (await fetch(url)).arrayBuffer();
    const ctx = new AudioContext();
    const samples = (await ctx.decodeAudioData(buffer)).getChannelData(0);
    ctx.close();
    const { width, height } = canvas, per = Math.max(1, Math.floor(samples.length / width));
    g.clearRect(0, 0, width, height);
    g.fillStyle = getComputedStyle(canvas).color;
    for (let x = 0; x < width; x++) {
      let lo = 0, hi = 0;
      for (let i = x * per; i < (x + 1) * per && i < samples.length; i++) {
        lo = Math.min(lo, samples[i]);
        hi = Math.max(hi, samples[i]);
      }
      g.fillRect(x, ((1 - hi) * height) / 2, 1, Math.max(1, ((hi - lo) * height) / 2));
    }
  }

  $("#regenerate").addEventListener("click", () => {
    $("#seed-fixed").checked = true;
    f.seed.value = lastSeed;
    playground.requestSubmit();
  });

  // "Open in playground" from the history: the request's script, voices and parameters.
  const from = new URLSearchParams(location.search).get("from");
  if (from) {
    api("GET", `/v1/history/${from}`).then((res) => {
      if (!res.ok) return;
      const p = res.body.params;
      script.value = p.input;
      for (const tag of ["S1", "S2"]) f[tag].value = (p.speakers && p.speakers[tag]) || "";
      for (const name of params) f[name].value = (p.sampling && p.sampling[name]) ?? p[name];
      $("#seed-fixed").checked = true;
      f.seed.value = res.body.seed;
      f.visibility.value = p.visibility;
      f.collection.value = p.collection || "";
      lint();
    });
  }
  lint();
}

// ---- Queue and history ---------------------------------------------------------------------

// A sample uploaded without a transcript is transcribed by the pool: its card follows it, and
// the edit form gets the text unless something was typed there meanwhile.
async function followTranscripts() {
  for (const p of $$("#voice-list .transcript[data-pending]")) {
    const card = p.closest(".voice");
    const res = await api("GET", `/v1/voices/${card.dataset.id}`);
    if (!res.ok || res.body.transcript_status === "pending") continue;
    p.removeAttribute("data-pending");
    p.removeAttribute("role");
    card.dataset.transcriptStatus = res.body.transcript_status;
    if (res.body.transcript_status === "filled") {
      p.className = "transcript";
      p.textContent = res.body.transcript;
      const area = $("textarea[name=transcript]", card);
      if (!area.value) area.value = res.body.transcript;
    } else {
      p.className = "transcript missing";
      p.textContent = `Transcription failed: ${res.body.transcript_error || "no reason given"}. ` +
        "Type what the clip says: cloning needs it.";
    }
  }
}
setInterval(() => { if ($("#voice-list .transcript[data-pending]")) followTranscripts(); }, 1500);

const requests = $("#requests");
if (requests) {
  requests.addEventListener("click", async (e) => {
    const button = e.target.closest("button.cancel");
    if (!button) return;
    button.disabled = true;
    const res = await api("POST", `/v1/history/${button.dataset.id}/cancel`);
    if (!res.ok) alert(errorText(res));
    refresh();
  });
  // While anything is queued or running, the list follows it: the page is fetched again and its
  // list swapped in, so focus and scroll stay where they are.
  async function refresh() {
    const html = await (await fetch(location.href, { credentials: "same-origin" })).text();
    const fresh = new DOMParser().parseFromString(html, "text/html").querySelector("#requests");
    if (fresh) {
      requests.innerHTML = fresh.innerHTML;
      localTimes(requests);
    }
  }
  setInterval(() => { if ($("[data-active]", requests)) refresh(); }, 1000);
}

localTimes();
