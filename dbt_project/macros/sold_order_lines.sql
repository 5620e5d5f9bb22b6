{#
    The order lines that count as sales, as a subquery: every staged line except those of
    cancelled orders (the revenue of a cancelled order is not revenue). fct_transactions holds
    exactly these lines; the reconciliation test reads them through this definition.
#}
{% macro sold_order_lines() -%}
    (
        select staged_lines.*
        from {{ ref('stg_order_details') }} as staged_lines
        where not exists (
            select 1 from {{ ref('stg_orders') }} as cancelled_orders
            where
                cancelled_orders.order_id = staged_lines.order_id
                and cancelled_orders.order_status = 'cancelled'
        )
    )
{%- endmacro %}
