// Starts Swagger UI for /docs. FastAPI's own /docs does this in an inline <script>; here it is a file, so the
// page's Content-Security-Policy can forbid inline scripts. The settings come from the element's data-config.
"use strict";
(function () {
  const element = document.getElementById("swagger-ui");
  const config = JSON.parse(element.dataset.config);
  window.ui = SwaggerUIBundle({
    ...config,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
  });
})();
