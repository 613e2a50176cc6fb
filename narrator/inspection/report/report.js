/* narrator report: materialise episode sections on demand, filter and sort the index. */
(function () {
  "use strict";

  function materialise(section) {
    var body = section.querySelector(".ep-body");
    var tpl = section.querySelector("template.ep-content");
    if (!body || !tpl || body.getAttribute("data-ready") === "1") {
      return;
    }
    body.appendChild(tpl.content.cloneNode(true));
    body.setAttribute("data-ready", "1");
  }

  function openEpisode(id, scroll) {
    var section = document.getElementById(id);
    if (!section || !section.classList.contains("episode")) {
      return;
    }
    section.hidden = false;
    section.open = true;
    materialise(section);
    if (scroll) {
      section.scrollIntoView({ block: "start" });
    }
  }

  document.querySelectorAll("details.episode").forEach(function (section) {
    section.addEventListener("toggle", function () {
      if (section.open) {
        materialise(section);
      }
    });
  });

  document.querySelectorAll("a.ep-link").forEach(function (link) {
    link.addEventListener("click", function () {
      openEpisode(link.getAttribute("href").slice(1), false);
    });
  });

  window.addEventListener("hashchange", function () {
    openEpisode(decodeURIComponent(window.location.hash.slice(1)), true);
  });
  if (window.location.hash) {
    openEpisode(decodeURIComponent(window.location.hash.slice(1)), true);
  }

  var filter = document.getElementById("filter");
  var onlyErrors = document.getElementById("only-errors");
  var shownCount = document.getElementById("shown-count");

  function applyFilter() {
    var query = filter.value.trim().toLowerCase();
    var errorsOnly = onlyErrors.checked;
    var shown = 0;
    document.querySelectorAll("#index tbody tr").forEach(function (row) {
      var match = (!query || row.getAttribute("data-search").indexOf(query) >= 0) &&
        (!errorsOnly || Number(row.getAttribute("data-errors")) > 0);
      row.hidden = !match;
      var section = document.getElementById("ep-" + row.getAttribute("data-episode"));
      if (section) {
        section.hidden = !match;
      }
      if (match) {
        shown += 1;
      }
    });
    shownCount.textContent = String(shown);
  }
  if (filter && onlyErrors && shownCount) {
    filter.addEventListener("input", applyFilter);
    onlyErrors.addEventListener("change", applyFilter);
  }

  function sortIndex(header) {
    var table = document.getElementById("index");
    var column = Array.prototype.indexOf.call(header.parentNode.children, header);
    var numeric = header.classList.contains("num");
    var descending = header.getAttribute("data-order") !== "desc";
    header.setAttribute("data-order", descending ? "desc" : "asc");
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[column].getAttribute("data-v");
      var y = b.cells[column].getAttribute("data-v");
      var order = numeric ? Number(x) - Number(y) : x.localeCompare(y);
      return descending ? -order : order;
    });
    rows.forEach(function (row) {
      body.appendChild(row);
    });
  }
  document.querySelectorAll("#index th[data-key]").forEach(function (header) {
    header.addEventListener("click", function () {
      sortIndex(header);
    });
  });

  var openAll = document.getElementById("open-visible");
  if (openAll) {
    openAll.addEventListener("click", function () {
      document.querySelectorAll("details.episode").forEach(function (section) {
        if (!section.hidden) {
          section.open = true;
          materialise(section);
        }
      });
    });
  }
  var closeAll = document.getElementById("close-all");
  if (closeAll) {
    closeAll.addEventListener("click", function () {
      document.querySelectorAll("details.episode").forEach(function (section) {
        section.open = false;
      });
    });
  }
})();
