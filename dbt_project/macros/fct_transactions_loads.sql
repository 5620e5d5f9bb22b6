{#
    How fct_transactions and the models and tests after it find out what a run has to do,
    from the load log core.fct_transactions_loads (one row per run; see that model).

    A load is an "append" when the inputs the fact was last built from are provably
    unchanged (same fingerprints of the lines and order headers up to the previous highest
    ids, same dimension members): the fact then only has to add the lines above the previous
    highest line id. Anything else is a "compare" (every line compared with its stored row,
    as before) or a "full refresh". The decision reads only the log and the (small)
    dimensions, so the fact's model SQL and its hooks reach the same one.
#}


{#
    An order-independent 64-bit fingerprint of one row's values; bit_xor() of it over a set
    of rows fingerprints the set (a changed, added or removed row changes it, except with
    probability 2^-64). PostgreSQL 14 or later (hash_record_extended, bit_xor).
#}
{% macro row_fingerprint(columns) -%}
    hash_record_extended(row({{ columns | join(', ') }}), 0)
{%- endmacro %}


{# The start of this dbt invocation (UTC, no time zone): a log row's loaded_at. #}
{% macro run_timestamp() -%}
    cast('{{ run_started_at.strftime("%Y-%m-%d %H:%M:%S.%f") }}' as timestamp)
{%- endmacro %}


{#
    The dimension members fct_transactions' keys resolve against (natural key, surrogate key,
    and for products the validity window), as one fingerprint: a scalar subquery. Names do not
    matter to the fact. Computed by the fact itself (the dimensions are small), so the load
    log does not wait for them.
#}
{% macro fct_transactions_dims_fingerprint() -%}
    (
        select
            {{ row_fingerprint([
                'customer_state.members', 'customer_state.fingerprint',
                'location_state.members', 'location_state.fingerprint',
                'product_state.members', 'product_state.fingerprint'
            ]) }}
        from (
            select
                count(*) as members,
                bit_xor({{ row_fingerprint(['customer_id', 'customer_key']) }}) as fingerprint
            from {{ ref('dim_customers') }}
        ) as customer_state
        cross join (
            select
                count(*) as members,
                bit_xor({{ row_fingerprint(['city_id', 'location_key']) }}) as fingerprint
            from {{ ref('dim_locations') }}
        ) as location_state
        cross join (
            select
                count(*) as members,
                bit_xor({{ row_fingerprint(['product_id', 'product_key', 'valid_from', 'valid_to']) }}) as fingerprint
            from {{ ref('dim_products') }}
        ) as product_state
    )
{%- endmacro %}


{#
    What fct_transactions does in this run: {'path': 'append', 'after_line_id': N, ...} when
    only lines with order_detail_id > N are new, else {'path': 'compare', ...}; 'load' is the
    invocation_id of the log row the fact consumes (none: no fresh row).

    The fresh row is the latest one written since the last consumed one, by whichever dbt
    invocation ran fct_transactions_loads (under Cosmos every model runs in an invocation of
    its own). Append needs it to have compared the inputs with that last consumed row, the
    state the fact holds, and found the old part and the dimensions unchanged.
#}
{% macro fct_transactions_load_plan() %}
    {% set compare = {'path': 'compare', 'after_line_id': none, 'min_order_id': none, 'load': none} %}
    {% if not execute %}
        {{ return(compare) }}
    {% endif %}
    {% set loads = ref('fct_transactions_loads') %}
    {% set query %}
        with

        previous_load as (
            select * from {{ loads }}
            where consumed_at is not null
            order by loaded_at desc
            limit 1
        ),

        current_load as (
            select * from {{ loads }}
            where
                consumed_at is null
                and loaded_at > coalesce((select previous_load.loaded_at from previous_load), '-infinity')
            order by loaded_at desc
            limit 1
        )

        select
            current_load.invocation_id,
            coalesce(
                current_load.compared_with_loaded_at = previous_load.loaded_at
                -- the lines and order headers up to the previous highest ids are the same rows
                and current_load.old_line_count = previous_load.line_count
                and current_load.old_lines_fingerprint is not distinct from previous_load.lines_fingerprint
                and current_load.old_order_count = previous_load.order_count
                and current_load.old_orders_fingerprint is not distinct from previous_load.orders_fingerprint
                -- every dimension member (and product version window) is the same
                and {{ fct_transactions_dims_fingerprint() }} = previous_load.dims_fingerprint
                -- no old line waits for an order header above the old ones (it could arrive now)
                and (
                    previous_load.max_line_order_id is null
                    or previous_load.max_line_order_id <= previous_load.max_order_id
                ),
                false
            ) as can_append,
            previous_load.max_line_id,
            -- the lowest order the new lines belong to: the append reads the order headers from there
            current_load.min_new_line_order_id
        from current_load
        left join previous_load
            on true
    {% endset %}
    {% set result = run_query(query) %}
    {% if result.rows | length == 0 %}
        {{ return(compare) }}
    {% endif %}
    {% set row = result.rows[0] %}
    {% if row[1] %}
        {{ return({'path': 'append', 'after_line_id': row[2], 'min_order_id': row[3], 'load': row[0]}) }}
    {% endif %}
    {{ return({'path': 'compare', 'after_line_id': none, 'min_order_id': none, 'load': row[0]}) }}
{% endmacro %}


{#
    fct_transactions' last post-hook, in the same transaction as its merge: mark the log row
    it consumed (see fct_transactions_load_plan) with the time, the path taken and the
    dimensions' fingerprint. Without a fresh row (the log model did not run since the last
    load) a row without input fingerprints is written instead, so the next run compares
    everything.
#}
{% macro fct_transactions_record_load() %}
    {% set loads = ref('fct_transactions_loads') %}
    {% set plan = fct_transactions_load_plan() %}
    {% set path = plan.path if is_incremental() else 'full refresh' %}
    {% set load = plan.load if plan.load is not none else invocation_id %}
    {% if plan.load is none %}
        insert into {{ loads }} (invocation_id, loaded_at)
        values ('{{ invocation_id }}', {{ run_timestamp() }});
    {% endif %}
    update {{ loads }}
    set
        consumed_at = clock_timestamp() at time zone 'UTC',
        load_path = '{{ path }}',
        dims_fingerprint = {{ fct_transactions_dims_fingerprint() }},
        appended_after_line_id = {{ plan.after_line_id if path == 'append' and plan.after_line_id is not none else 'null' }}
    where invocation_id = '{{ load }}'
{% endmacro %}


{#
    For a model built from fct_transactions (`relation`, its incremental `this`): what changed
    in the fact since the model last read it, i.e. in the fact loads consumed after
    max(`watermark_column`), which holds the consumed_at of the last load the model includes
    (macro fct_transactions_last_load).
    {'mode': 'delta', 'after_line_id': N} when every fact load since was an append of lines of
    new orders only: the fact then still holds every row it held, unchanged, plus the rows with
    transaction_id > N (N none: no new rows). Else {'mode': 'full'}, also when the model has no
    such column yet (built before it had one).
#}
{% macro fct_transactions_changes_since(relation, watermark_column='fact_loaded_at') %}
    {% set full = {'mode': 'full', 'after_line_id': none} %}
    {% if not execute %}
        {{ return(full) }}
    {% endif %}
    {% set columns = adapter.get_columns_in_relation(relation) | map(attribute='name') | list %}
    {% if watermark_column not in columns %}
        {{ return(full) }}
    {% endif %}
    {% set query %}
        with

        loads as (
            select * from {{ ref('fct_transactions_loads') }}
        ),

        watermark as (
            select max({{ watermark_column }}) as consumed_until from {{ relation }}
        )

        select
            watermark.consumed_until is not null
            -- the load the model last read is still in the log (not pruned), so are all after it
            and exists (select 1 from loads where loads.consumed_at = watermark.consumed_until)
            and coalesce(
                bool_and(
                    loads.load_path = 'append'
                    and loads.appended_after_line_id is not null
                    and loads.new_lines_in_new_orders
                ),
                true
            ) as can_add,
            min(loads.appended_after_line_id) as after_line_id
        from watermark
        left join loads
            on loads.consumed_at > watermark.consumed_until
        group by watermark.consumed_until
    {% endset %}
    {% set result = run_query(query) %}
    {% if result.rows[0][0] %}
        {{ return({'mode': 'delta', 'after_line_id': result.rows[0][1]}) }}
    {% endif %}
    {{ return(full) }}
{% endmacro %}


{#
    When the last fct_transactions load was committed (UTC), as a scalar subquery: a model
    built from the fact stores it with its rows, in the same statement as it reads the fact,
    to know next time which loads it has not seen (fct_transactions_changes_since).
#}
{% macro fct_transactions_last_load() -%}
    (select max(consumed_at) from {{ ref('fct_transactions_loads') }})
{%- endmacro %}


{#
    The fact rows not yet covered by a whole-table test run, as a predicate on `column` (the
    fact's transaction_id, or the order line id of the rows it is built from): those appended by
    the loads since the last load that was not an append (after such a load the tests read
    every row). `true` when the last load was not an append or the log says nothing.
    Rows are never changed by an append, so a row checked once stays as checked; a failing
    row stays in scope until a compare or full refresh load re-checks the whole table.
#}
{% macro fct_transactions_unchecked_rows(column='transaction_id') %}
    {% if not execute %}
        {{ return('true') }}
    {% endif %}
    {#- looked up in the graph, not ref(): a test on the fact does not depend on the log itself -#}
    {% for node in graph.nodes.values() if node.resource_type == 'model' and node.name == 'fct_transactions_loads' %}
        {% set loads = adapter.get_relation(database=node.database, schema=node.schema, identifier=node.alias) %}
        {% if loads is none %}
            {{ return('true') }}
        {% endif %}
        {% set query %}
            with

            consumed as (
                select * from {{ loads }}
                where consumed_at is not null
            ),

            last_full_check as (
                select max(loaded_at) as loaded_at from consumed
                where load_path is distinct from 'append'
            )

            select min(consumed.appended_after_line_id)
            from consumed
            cross join last_full_check
            where consumed.loaded_at > last_full_check.loaded_at
            having bool_and(consumed.load_path = 'append' and consumed.appended_after_line_id is not null)
        {% endset %}
        {% set result = run_query(query) %}
        {% if result.rows | length == 1 and result.rows[0][0] is not none %}
            {{ return(column ~ ' > ' ~ result.rows[0][0]) }}
        {% endif %}
    {% endfor %}
    {{ return('true') }}
{% endmacro %}
