-- Every model and feature a node has ever offered. A request naming one of them while no node
-- serves it is `no_provider` (404, worth retrying); a name never offered is `unknown_model` (400).
CREATE TABLE offered_models (
    model TEXT NOT NULL,
    feature TEXT NOT NULL,
    first_seen BIGINT NOT NULL,
    PRIMARY KEY (model, feature)
);
