// liu dashboard: swap in the server-rendered sections from server-sent events, draw the equity chart,
// confirm and send the actions. No framework, no build step; the token travels in an HttpOnly cookie.
(() => {
  "use strict";
  const byId = (id) => document.getElementById(id);
  let pending = null;

  function setLink(state) {
    const el = byId("link-state");
    el.textContent = state;
    el.className = "pill " + state;
  }

  function filterLog() {
    const min = Number(byId("log-level").value);
    for (const row of byId("log-rows").querySelectorAll("tr[data-level]")) {
      row.hidden = Number(row.dataset.level) < min;
    }
  }

  function drawEquity(eq, axis) {
    if (!window.Plotly || !eq.t.length) return;
    const traces = [
      { x: eq.t, y: eq.equity, name: "equity", type: "scatter", mode: "lines", line: { color: "#2952cc" } },
      { x: eq.t, y: eq.drawdown, name: "drawdown %", type: "scatter", mode: "lines", yaxis: "y2",
        fill: "tozeroy", line: { color: "firebrick" } },
    ];
    const layout = {
      margin: { l: 70, r: 20, t: 10, b: 40 }, showlegend: false,
      xaxis: { anchor: "y2", title: { text: axis } },
      yaxis: { domain: [0.35, 1], title: { text: "equity" } },
      yaxis2: { domain: [0, 0.28], title: { text: "drawdown %" } },
    };
    Plotly.react("equity-chart", traces, layout, { displayModeBar: false, responsive: true });
  }

  function apply(state) {
    for (const [id, html] of Object.entries(state.html)) {
      const el = byId(id);
      if (el) el.innerHTML = html;
    }
    filterLog();
    drawEquity(state.equity, state.time_axis);
    document.body.dataset.phase = state.phase;
  }

  function connect() {
    const source = new EventSource("/events");
    source.addEventListener("state", (ev) => {
      setLink("live");
      apply(JSON.parse(ev.data));
    });
    source.onerror = () => setLink(source.readyState === EventSource.CLOSED ? "closed" : "reconnecting");
  }

  function showResult(answer) {
    const el = byId("result");
    el.textContent = answer.message;
    el.className = "result" + (answer.ok ? "" : " fail");
    el.dataset.ok = answer.ok ? "1" : "0";
    el.hidden = false;
  }

  async function send(request) {
    try {
      const reply = await fetch("/api/control", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(request),
        credentials: "same-origin",
      });
      showResult(await reply.json());
    } catch (err) {
      showResult({ ok: false, message: "the dashboard did not answer: " + err });
    }
  }

  document.addEventListener("click", (ev) => {
    const button = ev.target.closest("[data-cmd]");
    if (!button) return;
    pending = { cmd: button.dataset.cmd };
    if (button.dataset.order) pending.client_order_id = button.dataset.order;
    byId("confirm-text").textContent = button.dataset.confirm;
    byId("confirm").showModal();
  });
  byId("confirm").addEventListener("close", () => {
    const request = pending;
    pending = null;
    if (request && byId("confirm").returnValue === "ok") send(request);
  });
  byId("log-level").addEventListener("change", filterLog);
  filterLog();
  connect();
})();
