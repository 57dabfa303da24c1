// Renders /openapi.json with the vendored Swagger UI. validatorUrl: null keeps the page from
// asking swagger.io to validate the document.
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  displayOperationId: true,
  validatorUrl: null,
});
