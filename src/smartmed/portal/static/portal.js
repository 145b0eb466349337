// smartmed portal: small behaviours; no inline scripts (the CSP allows only this origin).
document.addEventListener("alpine:init", () => {
  // Alpine's CSP build: components are registered here, templates only name them.
  window.Alpine.data("menu", () => ({
    open: false,
    toggle() { this.open = !this.open; },
    close() { this.open = false; },
    get expanded() { return this.open ? "true" : "false"; },
    get panelClass() { return this.open ? "show" : ""; },
  }));
});

function autosubmit(root) {
  // A language or role <select> submits its form when picked with a pointer. From the
  // keyboard, arrow keys change the value at once, so nothing happens until the person
  // moves on to the form's button (hidden until it has focus; WCAG 3.2.2 On Input).
  root.querySelectorAll(".js-hide").forEach((el) => el.classList.add("visually-hidden-focusable"));
  root.querySelectorAll("select[data-autosubmit]").forEach((select) => {
    if (select.dataset.bound) return;
    select.dataset.bound = "1";
    select.addEventListener("keydown", () => { select.dataset.keyboard = "1"; });
    select.addEventListener("pointerdown", () => { delete select.dataset.keyboard; });
    select.addEventListener("change", () => {
      if (!select.dataset.keyboard) select.form.requestSubmit();
    });
  });
}

function charts(root) {
  if (!window.echarts) return;
  root.querySelectorAll("[data-chart]").forEach((el) => {
    if (el.dataset.drawn) return;
    el.dataset.drawn = "1";
    const spec = JSON.parse(el.dataset.chart);
    const chart = window.echarts.init(el, null, { renderer: "svg" });
    chart.setOption({
      tooltip: { trigger: "item" },
      grid: { left: 8, right: 8, top: 8, bottom: 8, containLabel: true },
      xAxis: { type: "value", minInterval: 1 },
      yAxis: { type: "category", data: spec.labels, inverse: true },
      series: [{ type: "bar", data: spec.values, name: spec.name, itemStyle: { color: "#0d6efd" } }],
      aria: { enabled: true },
    });
    window.addEventListener("resize", () => chart.resize());
  });
}

document.addEventListener("DOMContentLoaded", () => { autosubmit(document); charts(document); });
document.addEventListener("htmx:afterSwap", (event) => { autosubmit(event.target); charts(event.target); });
