-- Query statistics for the performance endpoints; needs shared_preload_libraries on the server.
CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
