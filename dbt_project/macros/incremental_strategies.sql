{#
    Custom incremental strategies (dbt calls get_incremental_<name>_sql for
    incremental_strategy='<name>').
#}


{#
    merge_or_append: a merge on the (single-column) unique_key, done as a plain insert when
    every incoming key is above the highest key already stored, so no row can match. The
    check reads the new rows and the top of the key's index; a merge would join the whole
    table (fct_transactions: ~1 s at 1.8 million rows, against ~0.1 s for the insert).
#}
{% macro get_incremental_merge_or_append_sql(arg_dict) %}
    {% set unique_key = arg_dict['unique_key'] %}
    {% set check %}
        select coalesce(
            (select min({{ unique_key }}) from {{ arg_dict['temp_relation'] }})
            > (select max({{ unique_key }}) from {{ arg_dict['target_relation'] }}),
            true
        )
    {% endset %}
    {% if run_query(check).rows[0][0] %}
        {% do return(get_insert_into_sql(arg_dict['target_relation'], arg_dict['temp_relation'], arg_dict['dest_columns'])) %}
    {% endif %}
    {% do return(get_merge_sql(
        arg_dict['target_relation'], arg_dict['temp_relation'], unique_key,
        arg_dict['dest_columns'], arg_dict['incremental_predicates']
    )) %}
{% endmacro %}


{#
    replace: the model's query returns the whole new content; the table's rows are replaced in
    one transaction (delete, insert). For small tables computed from their own previous
    content plus a delta (the marts), where rows may also disappear.
#}
{% macro get_incremental_replace_sql(arg_dict) %}
    delete from {{ arg_dict['target_relation'] }};
    {{ get_insert_into_sql(arg_dict['target_relation'], arg_dict['temp_relation'], arg_dict['dest_columns']) }}
{% endmacro %}
