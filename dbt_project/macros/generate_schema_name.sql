{#
    Use the configured schema as it is (staging, core, marts, snapshots) instead of dbt's
    default `<target schema>_<custom schema>`: the schema names are part of the warehouse
    contract that dashboards rely on. Nodes without a schema config fall back to the target's.
#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {%- if custom_schema_name is none -%}
        {{ target.schema | trim }}
    {%- else -%}
        {{ custom_schema_name | trim }}
    {%- endif -%}
{%- endmacro %}
