-- Runs once, when the Postgres volume is first initialised: MLflow uses the database `mlflow`
-- (POSTGRES_DB), Prefect its own database `prefect`, both owned by POSTGRES_USER.
CREATE DATABASE prefect;
