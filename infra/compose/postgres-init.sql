-- Runs once, when the Postgres volume is first initialised: MLflow uses the database `mlflow`
-- (POSTGRES_DB), Prefect its own database `prefect`, MLflow's auth app `mlflow_auth`, all owned by POSTGRES_USER.
CREATE DATABASE prefect;
-- MLflow's basic-auth users and permissions (MLFLOW_AUTH_DATABASE_URI of the mlflow service)
CREATE DATABASE mlflow_auth;
